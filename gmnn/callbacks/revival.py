"""Dead-expert revival as a callback: split the busiest expert into every expert the gate shut out."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from gmnn.models.revival import ExpertRevival, revival_of


class ReviveDeadExperts(pl.Callback):
    """After each of the first ``epochs`` training epochs, revive the experts whose mean gate
    probability over the epoch fell below ``below``: each becomes a noisy copy of the busiest
    expert (parameters and Adam state) and takes half of its gate mass (the split step of
    split-and-merge EM, Ueda et al., 2000; :mod:`gmnn.models.revival`). Logs the number
    revived as ``train/revived_experts``.

    The model option ``revive_below`` adds this callback (``configure_callbacks``); add it
    yourself to revive with other settings. The usage is the model's epoch mean of its gate
    probabilities, averaged over the processes in the epoch's last training batch (where every
    process is in lockstep), so the epoch-end split runs no collective.

    Args:
        below: Threshold in ``(0, 1 / num_experts)``.
        epochs: Number of first epochs after which dead experts are revived (>= 0).
        noise: Std of the multiplicative noise on the copied parameters.
        gate_noise: Relative offset of the pair's gate rows.
    """

    def __init__(self, below: float, epochs: int = 5, noise: float = 0.05, gate_noise: float = 0.5) -> None:
        if not 0 < below < 1:  # the bound 1 / num_experts is checked in setup, where the model is known
            raise ValueError(f"below must be in (0, 1 / num_experts), got {below}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
        self.below, self.epochs = below, epochs
        self.revival = ExpertRevival(below, noise, gate_noise)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        revival_of(pl_module.num_experts, self.below, self.epochs)

    def _reviving(self, pl_module: pl.LightningModule) -> bool:
        return pl_module.current_epoch < self.epochs

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._reviving(pl_module) and pl_module.is_last_training_batch():
            self.revival.finish_epoch(trainer, pl_module.train_gate_mean.mean())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._reviving(pl_module):
            self.revival.revive(pl_module)
