"""Dual-temperature training: experts see a flat gate, the gate a sharp one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gmnn.models.base import MoEModule
from gmnn.nn.functional.combine import dense_mixture
from gmnn.nn.functional.routing import softmax_routing
from gmnn.nn.functional.temperature import (
    check_temperature_schedule,
    scheduled_temperature,
)
from gmnn.nn.mixture.output import MoEOutput


class DualTemperatureMoE(MoEModule):
    """Dense mixture trained with two gate temperatures and two optimizers.

    The experts are updated with the mixture loss computed from the gate at a
    high ``expert_temperature`` (every expert keeps receiving samples, no early
    collapse); the gate is updated with the loss at ``temperature`` (default
    1) and any regularizers. Manual optimization: one Adam for the gate, one
    for the experts, each holding only its own parameters. The temperature
    schedule (``temperature_decay`` ...) anneals ``expert_temperature``; the
    gate's temperature stays fixed and is used at inference.

    Args:
        expert_temperature: Gate temperature > 0 of the experts' loss.
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`.
    """

    def __init__(self, expert_temperature: float = 4.0, **kwargs: Any) -> None:
        check_temperature_schedule(
            expert_temperature, kwargs.get("temperature_decay", 0.0), kwargs.get("temperature_decay_start", 0),
            kwargs.get("temperature_min", 0.05),
        )
        if kwargs.get("freeze_experts"):
            raise ValueError("freeze_experts must be false for DualTemperatureMoE (it trains the experts); use DenseMoE")
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.expert_temperature = float(expert_temperature)

    def set_temperature(self, epoch: int) -> None:
        """The gate keeps ``temperature``; the experts' temperature follows the schedule."""
        hp = self.hparams
        self.temperature = float(hp.temperature)
        self.expert_temperature = scheduled_temperature(
            epoch, hp.expert_temperature, hp.temperature_decay, hp.temperature_decay_start, hp.temperature_min
        )

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.log("train/expert_temperature", self.expert_temperature, on_step=False, on_epoch=True, batch_size=1)

    def dual_losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor], MoEOutput]:
        """``(expert loss, gate loss terms, output)``: the expert loss reaches only the experts, the gate terms only the gate."""
        out = self(x)
        expert_gate = softmax_routing(out.gate_logits.detach(), self.expert_temperature)
        expert_loss = F.nll_loss(dense_mixture(expert_gate, out.expert_log_probs), y)
        frozen = out.expert_log_probs.detach()
        gate_out = replace(out, log_probs=self.combine(out.log_gate, frozen), expert_log_probs=frozen)
        return expert_loss, self.loss_terms(gate_out, x, y), gate_out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        self.check_first_batch(x, y, "train")
        gate_optimizer, expert_optimizer = self.optimizers()
        expert_loss, gate_terms, out = self.dual_losses(x, y)
        terms = {**gate_terms, "experts": expert_loss}
        self.guard_finite(terms)
        gate_loss = torch.stack(list(gate_terms.values())).sum()
        expert_optimizer.zero_grad()
        self.manual_backward(expert_loss)
        expert_optimizer.step()
        gate_optimizer.zero_grad()
        self.manual_backward(gate_loss)
        gate_optimizer.step()
        loss = (gate_loss + expert_loss).detach()
        self.log_step("train", loss, terms, out, y, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:  # type: ignore[override]
        """Two Adams: ``[gate (every non-expert parameter), experts]``."""
        expert_ids = {id(p) for p in self.experts.parameters()}
        gate_params = [p for p in self.parameters() if id(p) not in expert_ids and p.requires_grad]
        return [self.make_adam(gate_params), self.make_adam(self.experts.parameters())]
