"""Convolution followed by 2x2 max-pooling, computed as one matrix product and a maximum over phases.

``max_pool2d(conv2d(x, w), 2)`` evaluates the convolution at every position
and then keeps the largest of each 2x2 block. The four positions of a block
are four *phases*: shifting the kernel by (dy, dx) in {0, 1}^2 inside a
(k+1) x (k+1) window read at stride 2 gives each phase directly. So the
pooled map is the maximum over phases of one product ``phase_kernels @
patches``, where ``patches`` are the (k+1) x (k+1) windows at stride 2.

On CPU this is faster than the convolution and max-pool kernels for the
paper's small networks (one input channel, a handful of filters): the weight
gradient is one matrix product with the saved patches instead of a
convolution backward, and the maximum over phases is three elementwise
maxima whose backward routes the gradient with three saved masks
(``python scripts/bench_conv_pool.py`` times both).

Gradients equal ``max_pool2d``'s: each pooled value's gradient goes to one
position of its 2x2 block, the first maximum in row-major order where
positions tie (as PyTorch's max-pool kernel does).

The windows of an input are computed once for every layer that reads it:
a conv gate and conv experts on the same batch share them
(:func:`phase_patches` remembers the last input's, see :class:`PatchMemo`).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


class PhaseMax(torch.autograd.Function):
    """Maximum over the first dimension of ``[4, ...]``; the gradient goes to the first maximum.

    Returns the maximum and three 0/1 masks (the pairwise winners) that route the gradient; the
    masks are float comparisons written in place (much faster on CPU than boolean tensors).
    """

    @staticmethod
    def forward(phases: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        left, right = torch.maximum(phases[0], phases[1]), torch.maximum(phases[2], phases[3])
        # 1 where the later of a pair wins; a tie keeps the earlier one, as max_pool2d does.
        # Compared straight into float buffers (no boolean tensor, no temporary difference).
        masks = phases.new_empty((3, *phases.shape[1:]))
        second, fourth, right_wins = masks.unbind(0)
        torch.gt(phases[1], phases[0], out=second)
        torch.gt(phases[3], phases[2], out=fourth)
        torch.gt(right, left, out=right_wins)
        return torch.maximum(left, right), second, fourth, right_wins

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: tuple[Tensor, ...]) -> None:
        masks = output[1:]
        ctx.mark_non_differentiable(*masks)
        ctx.set_materialize_grads(False)  # the masks get no gradient: do not fill zeros for them
        ctx.save_for_backward(*masks)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *unused: Tensor | None) -> Tensor | None:  # type: ignore[override]
        if grad is None:  # grads are not materialized: None when the maximum itself gets no gradient
            return None
        second, fourth, right_wins = ctx.saved_tensors
        out = grad.new_empty((4, *grad.shape))
        grad_left, grad_1, grad_right, grad_3 = out.unbind(0)  # written in place: no stack copy
        torch.mul(grad, right_wins, out=grad_right)
        torch.sub(grad, grad_right, out=grad_left)  # exact: grad or 0
        torch.mul(grad_left, second, out=grad_1)
        torch.mul(grad_right, fourth, out=grad_3)
        grad_left.sub_(grad_1)
        grad_right.sub_(grad_3)
        return out


def phase_max(phases: Tensor) -> Tensor:
    """Maximum over the first dimension of ``[4, ...]`` (:class:`PhaseMax`; no masks when no gradient is needed).

    Under ``torch.func`` transforms (``vmap``, ``grad``) it is ``amax``, which splits the gradient of tied
    phases evenly instead of sending it to the first (the weight gradient is the same where tied phases
    read identical patches).
    """
    if torch._C._are_functorch_transforms_active():  # PhaseMax writes in place, which transforms refuse
        return phases.amax(0)
    if torch.is_grad_enabled() and phases.requires_grad:
        return PhaseMax.apply(phases)[0]
    return torch.maximum(torch.maximum(phases[0], phases[1]), torch.maximum(phases[2], phases[3]))


def phase_kernels(weight: Tensor) -> Tensor:
    """``[..., C_out, C_in, k, k]`` -> ``[..., 4 * C_out, C_in * (k+1)^2]``, phase-major rows."""
    kernels = torch.stack([F.pad(weight, (dx, 1 - dx, dy, 1 - dy)) for dy, dx in PHASES], dim=-5)
    return kernels.flatten(-3).flatten(-3, -2)


def _windows(x: Tensor, window: int) -> Tensor:
    windows = x.unfold(-2, window, 2).unfold(-2, window, 2)  # [..., N, C_in, h, w, window, window]
    lead = windows.dim() - 6
    order = (*range(lead), lead + 1, lead + 4, lead + 5, lead, lead + 2, lead + 3)
    return windows.permute(order).flatten(lead, lead + 2).flatten(lead + 1)


class PatchMemo(threading.local):
    """The windows of the last input :func:`phase_patches` read, reused while that very tensor is unchanged.

    A conv gate and conv experts read the same batch: the second layer reuses the first one's
    windows instead of copying them again (up to ``(k+1)**2 / 4`` times the batch's size) and
    autograd keeps one copy for both weight gradients instead of two. An entry matches only the same tensor
    object (held weakly: the memo never keeps an input alive, and forgets its windows when the input
    is freed) at the same in-place version, with the same window and the same grad mode.
    """

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.patches: Tensor | None = None

    def get(self, x: Tensor, window: int) -> Tensor:
        if x.is_inference() or torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
            return _windows(x, window)  # no version counter to check, or a tensor that lives inside a transform
        key = (window, x._version, torch.is_grad_enabled(), x.shape, x.stride(), x.storage_offset())
        if self.key is not None and self.key[0]() is x and self.key[1:] == key and self.patches is not None:
            return self.patches
        patches = _windows(x, window)
        self.key = (weakref.ref(x, self._forget), *key)
        self.patches = patches
        return patches

    def _forget(self, _: object) -> None:
        self.key, self.patches = None, None


PATCH_MEMO = PatchMemo()


def phase_patches(x: Tensor, window: int) -> Tensor:
    """``[..., N, C_in, H, W]`` -> ``[..., C_in * window^2, N * h * w]``: the windows at stride 2 (:class:`PatchMemo`)."""
    return PATCH_MEMO.get(x, window)


def conv_maxpool2_channels_first(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``max_pool2d(conv2d(x, weight, bias), 2)`` with the channels first: ``[..., C_out, N, h, w]``.

    Args:
        x: ``[..., N, C_in, H, W]``; leading dimensions (e.g. one per expert) batch independent convolutions.
        weight: ``[..., C_out, C_in, k, k]`` with the same leading dimensions (stride 1, no padding).
        bias: ``[..., C_out]`` or ``None``.
    """
    kernel = weight.shape[-1]
    n, h, w = x.shape[-4], (x.shape[-2] - kernel + 1) // 2, (x.shape[-1] - kernel + 1) // 2
    phases = torch.matmul(phase_kernels(weight), phase_patches(x, kernel + 1))  # [..., 4 * C_out, N * h * w]
    out = phase_max(phases.unflatten(-2, (4, -1)).movedim(-3, 0))  # [..., C_out, N * h * w]
    if bias is not None:
        out = out + bias.unsqueeze(-1)  # a bias shifts every phase equally: add it after the maximum
    return out.unflatten(-1, (n, h, w))


def conv_maxpool2(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int = 1) -> Tensor:
    """``max_pool2d(conv2d(x, weight, bias, groups=groups), 2)``.

    Args:
        x: ``[N, C_in, H, W]``.
        weight: ``[C_out, C_in / groups, k, k]`` (stride 1, no padding, no dilation).
        bias: ``[C_out]`` or ``None``.
        groups: Convolution groups.

    Returns:
        ``[N, C_out, (H - k + 1) // 2, (W - k + 1) // 2]``.
    """
    if groups == 1:
        return conv_maxpool2_channels_first(x, weight, bias).transpose(0, 1)
    per_group = weight.shape[0] // groups
    grouped_x = x.unflatten(1, (groups, -1)).transpose(0, 1)  # [G, N, C_in / G, H, W]
    grouped_bias = None if bias is None else bias.view(groups, per_group)
    out = conv_maxpool2_channels_first(grouped_x, weight.unflatten(0, (groups, per_group)), grouped_bias)
    return out.flatten(0, 1).transpose(0, 1)  # [N, C_out, h, w]


def is_plain_conv_pool(conv: nn.Module, pool: nn.Module) -> bool:
    """Whether ``conv`` then ``pool`` is a stride-1 unpadded ``Conv2d`` and a 2x2/stride-2 ``MaxPool2d``."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(pool, nn.MaxPool2d):
        return False
    conv_plain = (
        conv.stride == (1, 1) and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
        and conv.kernel_size[0] == conv.kernel_size[1]
    )
    pool_plain = pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0))
    return conv_plain and pool_plain and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
