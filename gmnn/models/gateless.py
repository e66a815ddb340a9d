"""Gate-less training: experts compete for samples by their own losses."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from gmnn.models.base import MoEModule
from gmnn.nn.combine import dense_mixture
from gmnn.nn.losses import entropy, per_expert_nll, softmin_allocation
from gmnn.nn.output import MoEOutput
from gmnn.validation import check_choice, check_non_negative

Allocation = Literal["loss", "entropy"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)


class GatelessMoE(MoEModule):
    """Mixture trained without a gate network.

    Each sample's expert weights are ``softmin(s_i / T)`` over per-expert
    scores ``s_i``: the per-sample loss (``allocation="loss"``, uses the
    labels) or the entropy of the expert's output (``"entropy"``), plus
    optional Gaussian noise of std ``allocation_noise`` while training; T is
    the (scheduled) ``temperature``. The weights carry no gradient: the loss is
    ``-log sum_i w_i p_i(y|x)``, which trains each expert mostly on the samples
    it already does best. Predictions (no labels) weight experts by
    ``softmin(entropy / T)``. To route at inference with a real gate, fit one on
    the trained experts: a ``DenseMoE`` with ``init_experts_from`` this
    checkpoint, ``freeze_experts: true`` and ``regularizers: {allocation: w}``
    (``configs/methods/distill_gate.yaml``).

    Args:
        allocation: Score of the training allocation: ``"loss"`` or ``"entropy"``.
        allocation_noise: Std >= 0 of Gaussian noise on the scores while training.
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule` (the gate ones are unused).
    """

    def __init__(self, allocation: Allocation = "loss", allocation_noise: float = 0.0, **kwargs: Any) -> None:
        check_choice("allocation", allocation, ALLOCATIONS)
        check_non_negative("allocation_noise", allocation_noise)
        super().__init__(**kwargs)

    def build_gate(self) -> nn.Module | None:
        return None

    def forward(self, x: Tensor) -> MoEOutput:
        self.check_input(x)
        expert_log_probs = torch.log_softmax(self.experts(x)[0], dim=-1)
        log_weights = softmin_allocation(entropy(expert_log_probs), self.temperature)
        return MoEOutput(
            log_probs=dense_mixture(log_weights, expert_log_probs),
            gate_probs=log_weights.exp(),
            gate_logits=None,
            expert_log_probs=expert_log_probs,
            selected=None,
            aux_loss=x.new_zeros(()),
            log_gate=log_weights,
        )

    def allocate(self, expert_log_probs: Tensor, y: Tensor) -> Tensor:
        """Log allocation weights ``[B, E]`` used by the loss (noise only while training)."""
        if self.hparams.allocation == "loss":
            scores = per_expert_nll(expert_log_probs, y)
        else:
            scores = entropy(expert_log_probs)
        noise = self.hparams.allocation_noise if self.training else 0.0
        return softmin_allocation(scores, self.temperature, noise)

    def loss_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``nll`` of the mixture weighted by the allocation (see :meth:`allocate`)."""
        log_weights = self.allocate(out.expert_log_probs, y)
        allocated = replace(out, log_probs=dense_mixture(log_weights, out.expert_log_probs), gate_probs=log_weights.exp())
        return super().loss_terms(allocated, x, y)
