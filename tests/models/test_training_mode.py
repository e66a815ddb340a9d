"""A model put in eval mode before ``fit`` still trains in training mode (Lightning keeps the mode it finds)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.models import DenseMoE, DualTemperatureMoE, StochasticMoE

COMMON = dict(input_shape=[2], num_classes=2, num_experts=2, expert_hidden=[4], gate_hidden=[4],
              regularizers={"importance": 0.5})


class Modes(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((pl_module.training, pl_module.gate.training))


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode at the start of training")  # the setup, on purpose
@pytest.mark.parametrize("variant", [DenseMoE, StochasticMoE, DualTemperatureMoE])
def test_eval_before_fit_still_trains_in_training_mode_with_the_regularizers_on(variant: type) -> None:
    model = variant(**COMMON)
    model.eval()  # e.g. after looking at its predictions
    modes = Modes()
    data = TensorDataset(torch.randn(64, 2), torch.randint(0, 2, (64,)))
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[modes])
    trainer.fit(model, DataLoader(data, batch_size=32), DataLoader(data, batch_size=64))
    assert modes.seen == [(True, True), (True, True)]
    assert "train/reg/importance" in trainer.callback_metrics  # logged only when the regularizer ran
