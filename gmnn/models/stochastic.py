"""Stochastic mixture of experts: one sampled expert per sample."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from gmnn.models.base import MoEModule
from gmnn.nn.functional.losses import per_expert_nll, stochastic_mixture_loss
from gmnn.nn.mixture.output import MoEOutput


class StochasticMoE(MoEModule):
    """Stochastic mixture of experts (Jacobs, Jordan, Nowlan & Hinton, 1991).

    While training, each sample's prediction comes from one expert sampled
    from ``g = softmax(gate(x) / T)``; at inference from the argmax expert.
    The loss is ``-log sum_i g_i exp(-L_i / 2)`` with ``L_i`` the per-sample
    negative log-likelihood of expert i, computed with logsumexp, so each
    expert learns as if it alone answered and the gate learns which expert to
    pick. All arguments are those of :class:`~gmnn.models.base.MoEModule`.
    """

    def forward(self, x: Tensor) -> MoEOutput:
        out = super().forward(x)
        if self.training:
            chosen = torch.multinomial(out.gate_probs, 1)
        else:
            chosen = out.gate_probs.argmax(-1, keepdim=True)
        index = chosen.unsqueeze(-1).expand(-1, 1, out.expert_log_probs.shape[-1])
        selected = out.expert_log_probs.gather(1, index)
        return replace(out, log_probs=selected[:, 0], selected=chosen, selected_log_probs=selected)

    def loss_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``nll`` is the stochastic mixture loss; regularizers as in the base class."""
        terms = super().loss_terms(out, x, y)
        terms["nll"] = stochastic_mixture_loss(out.log_gate, per_expert_nll(out.expert_log_probs, y))
        return terms
