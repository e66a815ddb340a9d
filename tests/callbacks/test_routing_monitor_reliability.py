"""RoutingMonitor on a model without MoE layers: one warning, then out of the way."""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.callbacks import RoutingMonitor
from tests.conftest import tiny_trainer


class Plain(L.LightningModule):
    """A linear classifier: no MoE layer, no gate; with ``has_forward=False`` not even a ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.linear(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.cross_entropy(self.linear(batch[0]), batch[1]))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", torch.nn.functional.cross_entropy(self.linear(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class NoForward(Plain):
    forward = L.LightningModule.forward  # Lightning's own: raises NotImplementedError


def _batches() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,))), batch_size=4)


def _monitor_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "RoutingMonitor" in str(w.message)]


@pytest.mark.parametrize("model_class", [Plain, NoForward])
def test_no_moe_layer_warns_once_then_stays_out_of_the_way(model_class: type[Plain]) -> None:
    monitor = RoutingMonitor(stages=("train", "val", "test"))
    model = model_class()
    trainer = tiny_trainer(max_epochs=2, callbacks=[monitor], limit_val_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, _batches(), _batches())
        trainer.test(model, _batches(), verbose=False)
    (message,) = _monitor_warnings(caught)
    assert "no MoE layer" in message and model_class.__name__ in message
    assert not any("routing" in key for key in trainer.callback_metrics)
    assert monitor.probe is None and not monitor.stats  # no probe ran, nothing accumulated
