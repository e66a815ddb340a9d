"""Gate-less training: experts compete for samples by their own losses."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, get_args

from torch import Tensor, nn

from gmnn.models.base import MoEModule
from gmnn.nn.functional.combine import class_log_probs, dense_mixture
from gmnn.nn.functional.losses import (
    entropy,
    per_expert_nll,
    softmin_allocation,
    stochastic_mixture_loss,
)
from gmnn.nn.mixture.output import MoEOutput
from gmnn.validation import check_choice, check_non_negative, check_positive

Allocation = Literal["loss", "entropy"]
ALLOCATIONS: tuple[str, ...] = get_args(Allocation)
Objective = Literal["mixture_likelihood", "stochastic", "argmax_expert"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
Prediction = Literal["mixture", "argmax"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)


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

    Paper mode (the reference implementation's ``moe_no_gate_model.py``): its
    ``moe_no_gate_entropy_model`` is ``allocation: entropy`` with
    ``objective: stochastic`` (its ``stochastic_loss``, ``-log sum_i w_i exp(-L_i / 2)``)
    and ``prediction: argmax``; its ``moe_no_gate_self_information_model`` is
    ``allocation: loss``, ``allocation_noise`` = ln 2 (its N(0, 1) noise, in bits) and
    ``objective: argmax_expert`` (only the chosen expert trains, on its own NLL).
    The reference scores in bits, so its T is gmnn's ``T ln 2``; its per-epoch
    temperature list (``no_gate_T``) is ``temperature_by_epoch``.

    Args:
        allocation: Score of the training allocation: ``"loss"`` or ``"entropy"``.
        allocation_noise: Std >= 0 of Gaussian noise on the scores while training.
        objective: ``"mixture_likelihood"`` ``-log sum_i w_i p_i(y|x)``; ``"stochastic"``
            ``-log sum_i w_i exp(-L_i / 2)`` with every expert's NLL ``L_i``; ``"argmax_expert"``:
            the NLL of the expert with the largest allocation weight, alone.
        prediction: ``"mixture"`` (experts weighted by ``softmin(entropy / T)``) or ``"argmax"``
            (the output of the expert with the lowest entropy).
        temperature_by_epoch: Temperature of each epoch (the last one holds after the list
            ends); replaces ``temperature`` and its decay when given.
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule` (the gate ones are unused).
    """

    def __init__(
        self,
        allocation: Allocation = "loss",
        allocation_noise: float = 0.0,
        objective: Objective = "mixture_likelihood",
        prediction: Prediction = "mixture",
        temperature_by_epoch: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        check_choice("allocation", allocation, ALLOCATIONS)
        check_non_negative("allocation_noise", allocation_noise)
        check_choice("objective", objective, OBJECTIVES)
        check_choice("prediction", prediction, PREDICTIONS)
        if temperature_by_epoch is not None:
            if not temperature_by_epoch:
                raise ValueError("temperature_by_epoch must hold at least one temperature (or be null)")
            for epoch, value in enumerate(temperature_by_epoch):
                check_positive(f"temperature_by_epoch[{epoch}]", value)
        super().__init__(**kwargs)
        self.set_temperature(0)

    def set_temperature(self, epoch: int) -> None:
        """``temperature_by_epoch[epoch]`` (the last entry after the list ends), else the base schedule."""
        steps = self.hparams.get("temperature_by_epoch")
        if steps:
            self.temperature = float(steps[min(epoch, len(steps) - 1)])
        else:
            super().set_temperature(epoch)

    def build_gate(self) -> nn.Module | None:
        return None

    def forward(self, x: Tensor) -> MoEOutput:
        self.check_input(x)
        expert_log_probs = class_log_probs(self.experts(x)[0])
        log_weights = softmin_allocation(entropy(expert_log_probs), self.temperature)
        if self.hparams.get("prediction", "mixture") == "argmax":
            selected = log_weights.argmax(dim=-1, keepdim=True)
            log_probs = expert_log_probs.gather(1, selected[..., None].expand(-1, -1, expert_log_probs.shape[-1]))[:, 0]
        else:
            selected, log_probs = None, dense_mixture(log_weights, expert_log_probs)
        return MoEOutput(
            log_probs=log_probs,
            gate_probs=log_weights.exp(),
            gate_logits=None,
            expert_log_probs=expert_log_probs,
            selected=selected,
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
        allocated = replace(out, log_probs=dense_mixture(log_weights, out.expert_log_probs), gate_probs=log_weights.exp(),
                            log_gate=log_weights)
        terms = super().loss_terms(allocated, x, y)
        objective = self.hparams.get("objective", "mixture_likelihood")
        if objective == "stochastic":
            terms["nll"] = stochastic_mixture_loss(log_weights, per_expert_nll(out.expert_log_probs, y))
        elif objective == "argmax_expert":
            chosen = log_weights.argmax(dim=-1, keepdim=True)
            terms["nll"] = per_expert_nll(out.expert_log_probs, y).gather(1, chosen).mean()
        return terms
