"""Convolution followed by 2x2 max-pooling, computed as one strided convolution.

``max_pool2d(conv2d(x, w), 2)`` evaluates the convolution at every position
and then keeps the largest of each 2x2 block. The four positions of a block
are four *phases*: shifting the kernel by (dy, dx) in {0, 1}^2 inside a
(k+1) x (k+1) window and striding by 2 gives each phase directly. One
convolution with the 4 phase kernels, and the maximum over phases, is the
same function, with less work on CPU than the max-pool kernel (about 1.6x
faster forward+backward for the paper's expert layer).

Gradients: where phases tie exactly the gradient is split between them
instead of sent to one; tied phases read identical patches (e.g. a constant
background) or tie by chance, so the weight gradient is the same up to
rounding. The gradient of ``x`` may differ on ties (the input is data here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


def conv_maxpool2(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int = 1) -> Tensor:
    """``max_pool2d(conv2d(x, weight, bias, groups=groups), 2)`` as one stride-2 convolution.

    Args:
        x: ``[N, C_in, H, W]``.
        weight: ``[C_out, C_in / groups, k, k]`` (stride 1, no padding, no dilation).
        bias: ``[C_out]`` or ``None``.
        groups: Convolution groups.

    Returns:
        ``[N, C_out, (H - k + 1) // 2, (W - k + 1) // 2]``.
    """
    out_channels = weight.shape[0]
    per_group = out_channels // groups
    # the 4 phase kernels, ordered [group, phase, channel] so each group's outputs stay contiguous
    kernels = torch.stack([F.pad(weight, (dx, 1 - dx, dy, 1 - dy)) for dy, dx in PHASES], dim=1)
    kernels = kernels.view(groups, per_group, 4, *kernels.shape[2:]).transpose(1, 2).flatten(0, 2)
    if bias is not None:
        bias = bias.view(groups, 1, per_group).expand(groups, 4, per_group).flatten()
    y = F.conv2d(x, kernels, bias, stride=2, groups=groups)
    return y.view(y.shape[0], groups, 4, per_group, *y.shape[2:]).amax(dim=2).flatten(1, 2)


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
