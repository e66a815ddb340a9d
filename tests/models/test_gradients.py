"""The task loss trains the gate (or router): every variant of ``gmnn.models.__all__``, every k (including 1).

The loss is the one a training step minimises, with no regularizer and no
auxiliary loss: if the gate learns only from a balancing term (or not at all),
these tests fail. Gate-less variants must have no gate parameters at all.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from gmnn.models import DenseMoE, MoEModule, TopKMoE
from tests.models.every_variant import batch, build, case_id, cases, expert_parameters, gate_parameters

pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*:UserWarning")  # training_step called without a Trainer


def task_loss(model: MoEModule, x: Tensor, y: Tensor) -> Tensor:
    """The loss of one training step: ``training_step``, or both losses of a manually optimised model."""
    model.train()
    if model.automatic_optimization:
        return model.training_step((x, y), 0)
    expert_loss, gate_terms, _ = model.dual_losses(x, y)  # DualTemperatureMoE
    return expert_loss + torch.stack(list(gate_terms.values())).sum()


def gate_gradients(model: MoEModule, x: Tensor, y: Tensor) -> dict[str, float]:
    """``{gate parameter: sum of |grad|}`` after backpropagating the task loss (0 for no gradient)."""
    model.zero_grad()
    task_loss(model, x, y).backward()
    return {name: 0.0 if p.grad is None else float(p.grad.abs().sum()) for name, p in gate_parameters(model).items()}


@pytest.mark.parametrize(("name", "extra"), cases(), ids=map(case_id, cases()))
def test_the_task_loss_reaches_every_gate_parameter(name: str, extra: dict) -> None:
    model = build(name, extra)
    assert model.hparams.get("regularizers") is None and not model.hparams.get("balance_weight")
    x, y = batch(model)
    if not gate_parameters(model):  # gate-less: routing comes from the experts alone, there is nothing else to train
        assert getattr(model, "gate", None) is None and name in ("GatelessMoE", "SingleModel", "ProductOfExperts")
        return
    grads = gate_gradients(model, x, y)
    assert grads and all(g > 0 for g in grads.values()), f"gate parameters without gradient: {grads}"
    expert_grads = [p.grad for p in expert_parameters(model).values() if p.grad is not None and p.grad.abs().sum() > 0]
    assert expert_grads, "no expert received a gradient"


@pytest.mark.parametrize("make", [lambda: DenseMoE(input_shape=[2], num_classes=3, num_experts=3),
                                  lambda: TopKMoE(k=1, input_shape=[2], num_classes=3, num_experts=3)],
                         ids=["dense", "top1"])
@pytest.mark.parametrize("broken", ["detached", "frozen"])
def test_the_check_fails_for_a_detached_or_frozen_gate(make, broken: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make()
    x, y = batch(model)
    if broken == "frozen":
        model.gate.requires_grad_(False)
    else:
        original = model.gate_logits
        monkeypatch.setattr(model, "gate_logits", lambda *args: original(*args).detach())
    assert all(g == 0 for g in gate_gradients(model, x, y).values())
