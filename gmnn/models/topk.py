"""Sparse top-k mixture of experts with real conditional computation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gmnn.models.base import MoEModule
from gmnn.nn.combine import top_k_mixture
from gmnn.nn.output import MoEOutput
from gmnn.nn.routing import softmax_routing, top_k_routing
from gmnn.validation import check_choice

GATE_GRADIENTS = ("residual", "renormalize")


def check_top_k(k: int, num_experts: int, gate_gradient: str) -> None:
    """Validate ``k`` against ``num_experts`` and the gate-gradient mode."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
        raise ValueError(f"k must be an integer in [1, num_experts={num_experts}], got {k!r}")
    check_choice("gate_gradient", gate_gradient, GATE_GRADIENTS)
    if k == 1 and gate_gradient == "renormalize":
        raise ValueError("gate_gradient='renormalize' with k=1 gives the gate no gradient; use 'residual' or k >= 2")


class TopKMoE(MoEModule):
    """Sparse mixture: each sample is routed to its k highest-scoring experts.

    Only the routed (sample, expert) pairs are computed (Shazeer et al., 2017).
    At inference the prediction is the mixture over the k experts with the
    gate softmax renormalised over them. While training, the gate must also
    learn when k = 1, where the renormalised weight is constantly 1; with
    ``gate_gradient="residual"`` (default) training uses the un-renormalised
    gate weights of the k experts and gives the remaining gate mass to the
    uniform distribution over classes. That is a proper distribution, equal to
    the dense mixture when k = E, and it raises an expert's gate weight on
    samples it predicts better than chance. ``"renormalize"`` trains with the
    renormalised mixture (k >= 2 only).

    Args:
        k: Experts per sample, ``1 <= k <= num_experts``.
        gate_gradient: ``"residual"`` or ``"renormalize"`` (see above).
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`.
    """

    def __init__(self, k: int = 1, gate_gradient: str = "residual", **kwargs: Any) -> None:
        check_top_k(k, kwargs.get("num_experts", 4), gate_gradient)
        self.k = k
        super().__init__(**kwargs)

    def forward(self, x: Tensor) -> MoEOutput:
        self.check_input(x)
        gate_logits = self.gate_logits(x, None)
        log_gate = softmax_routing(gate_logits, self.temperature)
        _, indices = top_k_routing(gate_logits, self.k)
        selected_log_probs = torch.log_softmax(self.experts.forward_selected(x, indices), dim=-1)
        residual = self.training and self.hparams.gate_gradient == "residual"
        return MoEOutput(
            log_probs=top_k_mixture(log_gate, indices, selected_log_probs, residual),
            gate_probs=log_gate.exp(),
            gate_logits=gate_logits,
            expert_log_probs=None,
            selected=indices,
            aux_loss=x.new_zeros(()),
            selected_log_probs=selected_log_probs,
        )
