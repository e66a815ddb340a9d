"""The decomposition metrics as functions of tensors, in bits (the module form is :mod:`gmnn.metrics.decomposition`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

LN2 = math.log(2.0)


def entropy_bits(probs: Tensor, dim: int = -1) -> Tensor:
    """Entropy in bits of distributions along ``dim``; ``0 log 0 = 0``."""
    return -torch.special.xlogy(probs, probs).sum(dim) / LN2


def mutual_information_bits(counts: Tensor) -> Tensor:
    """I(E;Y) in bits of a joint count (or probability) matrix ``[E, C]``; 0 when it is empty."""
    joint = counts.double() / counts.sum().clamp_min(1e-12)
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    ratio = torch.where(joint > 0, joint / outer.clamp_min(1e-300), torch.ones_like(joint))
    return (torch.special.xlogy(joint, ratio).sum() / LN2).float()
