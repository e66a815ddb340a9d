"""E linear layers at once from stacked weights ``[E, O, I]``: one input for all, or one input each."""

from __future__ import annotations

import torch
from torch import Tensor


def linear_shared(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """E linear layers on one input: ``x [N, I]``, ``weight [E, O, I]`` -> ``[E, N, O]``."""
    experts, out, width = weight.shape
    y = x @ weight.reshape(experts * out, width).t()
    if bias is not None:
        y = y + bias.reshape(-1)
    return y.view(x.shape[0], experts, out).transpose(0, 1)


def linear_grouped(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """E linear layers, one input each: ``x [E, N, I]``, ``weight [E, O, I]`` -> ``[E, N, O]``."""
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
