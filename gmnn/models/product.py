"""Product of experts."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gmnn.models.base import MoEModule
from gmnn.nn.functional.combine import product_of_experts


class ProductOfExperts(MoEModule):
    """Gated product of experts (Hinton, 2002).

    ``log p(y|x) ∝ sum_i g_i(x) log p_i(y|x)``, renormalised over classes with
    ``log_softmax``. With ``gated=False`` there is no gate network and every
    weight is one: the plain product of experts.

    Args:
        gated: Weight each expert by the gate's probability (else by one).
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`.
    """

    def __init__(self, gated: bool = True, **kwargs: Any) -> None:
        self.gated = gated
        super().__init__(**kwargs)

    def build_gate(self) -> nn.Module | None:
        return super().build_gate() if self.gated else None

    def gate_logits(self, x: Tensor, expert_hidden: Tensor) -> Tensor:
        if self.gate is None:
            return x.new_zeros(x.shape[0], self.num_experts)
        return super().gate_logits(x, expert_hidden)

    def combine(self, log_gate: Tensor, expert_log_probs: Tensor) -> Tensor:
        weights = log_gate.exp() if self.gated else torch.ones_like(log_gate)
        return product_of_experts(weights, expert_log_probs)
