"""A gate that predicts each expert's loss."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from gmnn.models.base import MoEModule
from gmnn.nn.functional.combine import dense_mixture
from gmnn.nn.functional.losses import per_expert_nll
from gmnn.nn.functional.routing import softmax_routing
from gmnn.nn.mixture.output import MoEOutput
from gmnn.validation import check_choice

GateLoss = Literal["mse", "l1_sum"]
ExpertTraining = Literal["mixture", "argmax", "sampled"]


class ExpertLossGateMoE(MoEModule):
    """Mixture whose gate regresses every expert's per-sample log-loss.

    The gate network outputs ``[B, E]`` predicted negative log-likelihoods
    ``l_i(x)``; the gate logits are ``-l_i(x)``, so the weights are
    ``softmin(l / T)``. The gate is trained only by the MSE to the experts'
    actual per-sample losses (term ``loss_prediction``), the experts by the
    mixture under those (detached) weights. At inference each sample goes to
    the expert with the lowest predicted loss (``selected``), and the
    prediction is that expert's.

    Paper mode (the reference's loss-gate models, ``moe_models/moe_expert_loss_model.py`` and
    ``expert_loss_gate_optimizer`` in ``moe_models/moe_models_base.py`` lines 70-100 of
    yamsgithub/modular_deep_learning, where the gate outputs ``g_i`` regress ``log p_i(y|x)``,
    i.e. ``g = -l``): ``gate_loss="l1_sum"`` trains the gate on ``sum_i mean_batch |l_i - L_i|``
    (``expert_entropy_loss``, helper/moe_models.py lines 40-50) instead of the MSE;
    ``train_experts="argmax"`` trains only each sample's expert with the lowest predicted loss on
    its own NLL (the reference's ``cross_entropy_loss`` of the selected expert's output), and
    ``"sampled"`` samples that expert from ``softmax(-l)`` in every forward pass, inference
    included (the reference's ``moe_expert_stochastic_model``,
    ``aaai_2022/src/mnist/unused/mnist_gate_expert_loss_moe_training.py.bak`` lines 61-89).

    Args:
        gate_loss: ``"mse"`` (default) or ``"l1_sum"`` (paper mode).
        train_experts: ``"mixture"`` (default), ``"argmax"`` or ``"sampled"`` (paper mode).
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`.
    """

    def __init__(self, gate_loss: GateLoss = "mse", train_experts: ExpertTraining = "mixture", **kwargs: Any) -> None:
        check_choice("gate_loss", gate_loss, get_args(GateLoss))
        check_choice("train_experts", train_experts, get_args(ExpertTraining))
        self.gate_loss, self.train_experts = gate_loss, train_experts
        super().__init__(**kwargs)

    def gate_logits(self, x: Tensor, expert_hidden: Tensor) -> Tensor:
        return -super().gate_logits(x, expert_hidden)

    def forward(self, x: Tensor) -> MoEOutput:
        out = super().forward(x)
        if self.train_experts == "sampled":  # every pass, as the reference's stochastic loss-gate model
            chosen = torch.multinomial(out.gate_probs, 1)
        elif self.training and self.train_experts == "mixture":
            return out
        else:
            chosen = out.chosen_expert.unsqueeze(-1)
        index = chosen.unsqueeze(-1).expand(-1, 1, out.expert_log_probs.shape[-1])
        return replace(out, log_probs=out.expert_log_probs.gather(1, index)[:, 0], selected=chosen)

    def loss_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``nll`` of the mixture with the gate detached (or of the selected expert, paper mode), plus
        ``loss_prediction`` (the gate's MSE, or summed L1, to the experts' per-sample losses)."""
        if self.train_experts == "mixture":
            log_gate = softmax_routing(out.gate_logits.detach(), self.temperature)
            out = replace(out, log_probs=dense_mixture(log_gate, out.expert_log_probs))
        terms = super().loss_terms(out, x, y)  # paper mode: out.log_probs is the selected expert's
        losses = per_expert_nll(out.expert_log_probs, y).detach()
        if self.gate_loss == "l1_sum":
            terms["loss_prediction"] = (-out.gate_logits - losses).abs().mean(0).sum()
        else:
            terms["loss_prediction"] = F.mse_loss(-out.gate_logits, losses)
        return terms
