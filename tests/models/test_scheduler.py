"""The optional per-step learning-rate schedule of MoEModule.configure_optimizers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.models import DenseMoE
from tests.conftest import tiny_trainer


def _train(scheduler: str, lr: float = 0.01) -> tuple[DenseMoE, list[float]]:
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=2, lr=lr, scheduler=scheduler)
    seen: list[float] = []

    original = model.on_train_batch_start

    def record(batch, batch_idx):  # noqa: ANN001, ANN202
        seen.append(model.optimizers().param_groups[0]["lr"])
        return original(batch, batch_idx)

    model.on_train_batch_start = record
    data = DataLoader(TensorDataset(torch.randn(80, 2), torch.randint(0, 2, (80,))), batch_size=8)  # 10 steps
    tiny_trainer(max_epochs=2).fit(model, data)
    return model, seen


def test_no_schedule_keeps_lr() -> None:
    _, seen = _train("none")
    assert seen == [0.01] * 20


def test_cosine_decays_to_zero_over_all_steps() -> None:
    _, seen = _train("cosine")
    assert len(seen) == 20 and seen[0] == pytest.approx(0.01)
    assert seen[10] == pytest.approx(0.01 * (1 + torch.cos(torch.tensor(torch.pi * 10 / 20)).item()) / 2)
    assert all(a > b for a, b in zip(seen, seen[1:]))


def test_onecycle_warms_up_to_lr_then_decays() -> None:
    _, seen = _train("onecycle")
    peak = max(range(20), key=seen.__getitem__)
    assert seen[0] == pytest.approx(0.01 / 25)  # OneCycle's default initial lr = max_lr / 25
    assert seen[peak] == pytest.approx(0.01, rel=0.05) and 4 <= peak <= 6  # 30% of 20 steps
    assert seen[-1] < 0.01 / 25


def test_unknown_scheduler_is_refused() -> None:
    with pytest.raises(ValueError, match="scheduler must be one of \\('none', 'cosine', 'onecycle'\\)"):
        DenseMoE(scheduler="step")
