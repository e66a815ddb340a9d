"""Numerical safety: saturated gates stay finite; a NaN/inf loss stops training naming the term and step."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from gmnn.models import (
    AttentionGateMoE,
    DenseMoE,
    DualTemperatureMoE,
    ExpertLossGateMoE,
    MoEModule,
    ProductOfExperts,
    StochasticMoE,
    TopKMoE,
)
from gmnn.models.regularization import REGULARIZERS
from gmnn.models.checks import FiniteLossGuard
from gmnn.nn.mixture.output import MoEOutput
from tests.conftest import tiny_trainer
from tests.models.test_variants import VARIANTS

COMMON = dict(input_shape=[2], num_classes=3, num_experts=4, expert_hidden=[8], gate_hidden=[8])
EVERY_REGULARIZER = {name: 0.5 for name in REGULARIZERS}
GATED = {
    **VARIANTS,
    "stochastic": lambda: StochasticMoE(**COMMON),
    "expert_loss_gate": lambda: ExpertLossGateMoE(**COMMON),
    "dual_temperature": lambda: DualTemperatureMoE(**COMMON),
    "dense_every_regularizer": lambda: DenseMoE(regularizers=EVERY_REGULARIZER, **COMMON),
    "top1_every_regularizer": lambda: TopKMoE(k=1, regularizers=EVERY_REGULARIZER, **COMMON),
}


# +-1e4 for every model and term; +-1e30 for routing and combination only (the z-loss and the
# expert-loss gate square raw logits, which overflows float32 by definition at 1e30)
SATURATED = [(name, 1e4) for name in GATED] + [(name, 1e30) for name in VARIANTS]


@pytest.mark.parametrize(("name", "scale"), SATURATED)
def test_saturated_gate_gives_finite_loss_and_gradients(name: str, scale: float, monkeypatch: pytest.MonkeyPatch) -> None:
    model = GATED[name]()
    model.train()
    original = model.gate_logits
    extreme = torch.tensor([[1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, 1.0, -1.0]]).repeat(4, 1) * scale

    def saturated(x: Tensor, hidden: Tensor | None) -> Tensor:
        logits = original(x, hidden)
        return logits + extreme  # +-scale: the gate gives every other expert probability exactly 0

    monkeypatch.setattr(model, "gate_logits", saturated)
    x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    out = model(x)
    if model.gate is not None:
        assert (out.gate_probs == 0).any(), "the test must drive some gate probabilities to exactly 0"
    terms = model.loss_terms(out, x, y)
    for term, value in terms.items():
        assert torch.isfinite(value), f"loss term {term} is {value}"
    loss = sum(terms.values())
    loss.backward()
    for param_name, param in model.named_parameters():
        if param.grad is not None:
            assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


class _Regularized(DenseMoE):
    """A DenseMoE with a regularizer that becomes NaN at step ``bad_step`` (only in tests)."""

    def __init__(self, bad_step: int = 3, **kwargs: object) -> None:
        super().__init__(**kwargs)

    def loss_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        terms = super().loss_terms(out, x, y)
        poison = float("nan") if self.global_step == self.hparams.bad_step else 0.0
        terms["importance"] = out.gate_probs.sum() * 0.0 + poison
        return terms


def _data(x: Tensor | None = None) -> DataLoader:
    x = torch.randn(40, 2) if x is None else x
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (len(x),))), batch_size=4)


def test_nan_regularizer_stops_training_naming_it_and_the_step() -> None:
    model = _Regularized(bad_step=3, **COMMON)
    with pytest.raises(FloatingPointError, match=r"at global step 3: the regularizer 'importance' went non-finite"):
        tiny_trainer(max_epochs=1).fit(model, _data())
    # on CPU the check runs before backward: the weights never saw the NaN
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_inf_input_stops_training_naming_the_task_loss() -> None:
    x = torch.randn(40, 2)
    x[21] = float("inf")  # batch 5 (step 5)
    with pytest.raises(FloatingPointError, match=r"at global step 5: the task loss 'nll' went non-finite"):
        tiny_trainer(max_epochs=1).fit(DenseMoE(**COMMON), _data(x))


def test_guard_records_without_sync_and_reports_the_first_step() -> None:
    guard = FiniteLossGuard()
    finite = {"nll": torch.tensor(1.0), "z_loss": torch.tensor(0.5)}
    guard.record(finite, 0)
    guard.check()  # all finite: no error
    guard.record({"nll": torch.tensor(1.0), "z_loss": torch.tensor(float("inf"))}, 7)
    guard.record({"nll": torch.tensor(float("nan")), "z_loss": torch.tensor(float("nan"))}, 8)
    assert guard.first_bad["z_loss"].item() == 7 and guard.first_bad["nll"].item() == 8
    with pytest.raises(FloatingPointError, match=r"at global step 7: the regularizer 'z_loss' went"):
        guard.check()
    gathered = FiniteLossGuard()
    gathered.record(finite, 0)
    other_rank = torch.tensor([2, torch.iinfo(torch.int64).max])  # the other process saw a NaN task loss at step 2
    with pytest.raises(FloatingPointError, match=r"step 2: the task loss 'nll'"):
        gathered.check(gather=lambda steps: torch.stack([steps, other_rank]))


def test_a_fresh_fit_forgets_an_earlier_non_finite_loss() -> None:
    model: MoEModule = _Regularized(bad_step=1, **COMMON)
    with pytest.raises(FloatingPointError):
        tiny_trainer(max_epochs=1).fit(model, _data())
    model.hparams.bad_step = -1
    tiny_trainer(max_epochs=1).fit(model, _data())  # no error: the guard was reset


@pytest.mark.parametrize("make", [lambda: TopKMoE(k=1, **COMMON), lambda: ProductOfExperts(**COMMON), lambda: AttentionGateMoE(**COMMON)])
def test_every_variant_runs_the_guard(make) -> None:
    x = torch.randn(40, 2)
    x[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="step 0: the task loss 'nll'"):
        tiny_trainer(max_epochs=1).fit(make(), _data(x))
