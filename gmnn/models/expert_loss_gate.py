"""A gate that predicts each expert's loss."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from gmnn.models.base import MoEModule
from gmnn.nn.combine import dense_mixture
from gmnn.nn.losses import per_expert_nll
from gmnn.nn.output import MoEOutput
from gmnn.nn.routing import softmax_routing


class ExpertLossGateMoE(MoEModule):
    """Mixture whose gate regresses every expert's per-sample log-loss.

    The gate network outputs ``[B, E]`` predicted negative log-likelihoods
    ``l_i(x)``; the gate logits are ``-l_i(x)``, so the weights are
    ``softmin(l / T)``. The gate is trained only by the MSE to the experts'
    actual per-sample losses (term ``loss_prediction``), the experts by the
    mixture under those (detached) weights. At inference each sample goes to
    the expert with the lowest predicted loss (``selected``), and the
    prediction is that expert's. All arguments are those of
    :class:`~gmnn.models.base.MoEModule`.
    """

    def gate_logits(self, x: Tensor, expert_hidden: Tensor) -> Tensor:
        return -super().gate_logits(x, expert_hidden)

    def forward(self, x: Tensor) -> MoEOutput:
        out = super().forward(x)
        if self.training:
            return out
        chosen = out.chosen_expert.unsqueeze(-1)
        return replace(out, log_probs=out.chosen_expert_log_probs(), selected=chosen)

    def loss_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``nll`` of the mixture with the gate detached, plus ``loss_prediction`` (MSE of the gate)."""
        log_gate = softmax_routing(out.gate_logits.detach(), self.temperature)
        mixture = replace(out, log_probs=dense_mixture(log_gate, out.expert_log_probs))
        terms = super().loss_terms(mixture, x, y)
        losses = per_expert_nll(out.expert_log_probs, y).detach()
        terms["loss_prediction"] = F.mse_loss(-out.gate_logits, losses)
        return terms
