"""Linear layers over rows grouped by expert, without a Python loop over the groups.

Rows are sorted by expert and split by ``offsets`` (the cumulative group
sizes, kept on the device: no host sync). :func:`grouped_linear` runs expert
e's linear layer on its rows with ``torch._grouped_mm`` in the forward and the
backward pass; :func:`grouped_mm_works` says whether this build of PyTorch
supports it on a device and dtype (callers fall back to a loop over groups).

Under ``torch.compile`` the grouped path is taken only in the dtypes that
``torch._grouped_mm``'s shape function (the meta kernel the compiler traces
with) accepts, :data:`COMPILABLE_DTYPES`: a float32 layer compiles through the
loop over groups even where ``torch._grouped_mm`` runs float32 eagerly (the CPU).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


class _GroupedLinear(torch.autograd.Function):
    """``y[rows of e] = x[rows of e] @ weight[e].T`` for every group e, via ``torch._grouped_mm``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight, offsets)
        return torch._grouped_mm(x, weight.transpose(1, 2), offs=offsets)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, weight, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch._grouped_mm(grad, weight, offs=offsets)
        if ctx.needs_input_grad[1]:
            grad_w = torch._grouped_mm(grad.t(), x, offs=offsets)
        return grad_x, grad_w, None


#: The dtypes ``torch._grouped_mm`` can be traced in by ``torch.compile`` (its meta kernel refuses the others).
COMPILABLE_DTYPES = (torch.bfloat16, torch.float16)


def grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs forward and backward on this device type and dtype.

    Probed once per device type and dtype, eagerly: under ``torch.compile`` the answer is a constant
    of the graph (the probe is neither traced nor a graph break).
    """
    return _probe(device_type, dtype)


# what ``@torch.compiler.assume_constant_result`` does, without the import of ``torch._dynamo`` it makes
# (the ``gmnn`` command's start-up need not load the compiler); tests/nn/test_grouped.py checks they agree
grouped_mm_works._dynamo_marked_constant = True  # type: ignore[attr-defined]


@functools.cache
def _probe(device_type: str, dtype: torch.dtype) -> bool:
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:  # with gradients on, whatever the caller's mode (a first call under no_grad must not cache False)
        with torch.inference_mode(False), torch.enable_grad():
            return _probe_once(device_type, dtype)
    except (RuntimeError, NotImplementedError):
        return False


def _probe_once(device_type: str, dtype: torch.dtype) -> bool:
    x = torch.randn(6, 8, device=device_type, dtype=dtype, requires_grad=True)
    w = torch.randn(2, 4, 8, device=device_type, dtype=dtype, requires_grad=True)
    offsets = torch.tensor([2, 6], device=device_type, dtype=torch.int32)
    y = _GroupedLinear.apply(x, w, offsets)
    y.backward(torch.ones_like(y))
    reference = torch.cat([x[:2] @ w[0].t(), x[2:] @ w[1].t()])
    return bool(torch.allclose(y, reference, atol=1e-3, rtol=1e-3))


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype :func:`grouped_linear` computes in: autocast's where it is on (``_grouped_mm`` is no autocast op), else ``x``'s."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def can_group(x: Tensor, *widths: int) -> bool:
    """Whether :func:`grouped_linear` runs on rows like ``x`` with these layer widths.

    ``torch._grouped_mm`` must work on the device and the compute dtype, and
    every width must be a multiple of 16 bytes (its stride requirement). While
    ``torch.compile`` traces, only :data:`COMPILABLE_DTYPES` are grouped.
    """
    dtype = compute_dtype(x)
    if dtype not in COMPILABLE_DTYPES and torch.compiler.is_compiling():
        return False
    aligned = all(width * dtype.itemsize % 16 == 0 for width in widths)
    return aligned and grouped_mm_works(x.device.type, dtype)


def grouped_linear(x: Tensor, weight: Tensor, bias: Tensor | None, offsets: Tensor, group: Tensor) -> Tensor:
    """Linear layer ``e`` on the rows of group ``e``: ``[N, I] -> [N, O]`` (needs :func:`can_group`).

    Args:
        x: Rows sorted by group ``[N, I]``.
        weight: One weight per group ``[E, O, I]``.
        bias: One bias per group ``[E, O]`` or ``None``.
        offsets: End of each group in ``x`` ``[E]`` (int32 cumulative sizes; groups may be empty).
        group: Group of every row ``[N]`` (selects the bias).
    """
    dtype = compute_dtype(x)
    y = _GroupedLinear.apply(x.to(dtype), weight.to(dtype), offsets)
    return y if bias is None else y + bias.index_select(0, group).to(dtype)
