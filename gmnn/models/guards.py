"""The run-time guards every MoE step runs: labels, NaN/inf losses, the epoch's last batch.

A mixin of :class:`~gmnn.models.base.MoEModule`, kept apart so that the training
loop stays short. Each check is cheap on every batch: on one CPU process it reads
its value at once (no device to sync with); elsewhere it records on the device
and reads back every ``log_every_n_steps`` steps, in the epoch's last training
step and at the end of evaluation epochs, where every process takes part in the
``all_gather`` together.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gmnn.models.checks import (
    BatchGuard,
    FiniteLossGuard,
    check_batch,
    check_training_precision,
)


class StepGuards:
    """Guards of a classification MoE module (``num_classes``, ``_trainer`` and ``all_gather`` of a LightningModule)."""

    num_classes: int

    def labels_out_of_range(self, y: Tensor) -> Tensor | None:
        """Whether any label of the batch is outside ``[0, num_classes)`` (a device tensor; ``None``: no labels)."""
        return ((y < 0) | (y >= self.num_classes)).any()

    def guard_batch(self, stage: str, loss: Tensor, y: Tensor) -> None:
        """Record an evaluation batch's loss and labels on the device (:class:`~gmnn.models.checks.BatchGuard`).

        Checked at once on one CPU process (no sync to pay), else at the end of the
        epoch (:meth:`check_eval_guard`), so that ``val/loss`` never silently becomes NaN.
        """
        guards = self.__dict__.setdefault("_batch_guards", {})
        guard = guards.setdefault(stage, BatchGuard())
        guard.record(loss, self.labels_out_of_range(y), getattr(self, "batch_index", -1))
        trainer = self._trainer
        if trainer is None or (loss.device.type == "cpu" and trainer.world_size == 1):
            guard.check(stage, self.num_classes)

    def check_eval_guard(self, stage: str) -> None:
        """Raise for a bad batch of this epoch on any process (an ``all_gather`` every process reaches here)."""
        guard = self.__dict__.get("_batch_guards", {}).get(stage)
        trainer = self._trainer
        if guard is not None and trainer is not None:
            guard.check(stage, self.num_classes, self.all_gather if trainer.world_size > 1 else None)

    def on_validation_epoch_end(self) -> None:
        self.check_eval_guard("val")

    def on_test_epoch_end(self) -> None:
        self.check_eval_guard("test")

    def setup(self, stage: str) -> None:
        """Fresh guards for every run: the first batch of every stage is checked again; fit refuses a
        training precision the losses cannot be checked in."""
        self._checked_stages: set[str] = set()
        if stage == "fit":
            self._finite_guard = FiniteLossGuard()
            check_training_precision(self._trainer.precision)  # type: ignore[union-attr]

    def on_fit_end(self) -> None:
        """Refuse a run whose training set was empty (nothing was trained)."""
        trainer = self._trainer
        if trainer is not None and trainer.num_training_batches == 0 and trainer.limit_train_batches != 0:
            raise ValueError("the training set is empty: the train dataloader yielded 0 batches, nothing was trained")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.batch_index = batch_idx

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.batch_index = batch_idx

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.batch_index = batch_idx

    def is_last_training_batch(self) -> bool:
        """Whether the current batch is the epoch's last training batch (the same answer on every process).

        Cross-process checks run here, inside the step, where every rank is in
        lockstep: in an epoch-end hook a rank-zero-only callback (the progress
        bar computing its epoch metrics, which syncs them) can interleave with
        them and pair the collectives out of order.
        """
        trainer = self._trainer
        if trainer is None:
            return False
        return bool(trainer.is_last_batch) or trainer.fit_loop.epoch_loop.batch_idx + 1 >= trainer.num_training_batches

    def check_first_batch(self, x: Tensor, y: Tensor, stage: str) -> None:
        """Check the labels of the first batch of each stage of a run (one host sync), and of every
        batch on the CPU, where reading their range costs no sync; elsewhere later batches are
        checked on the device (:meth:`guard_batch`, :meth:`guard_finite`)."""
        checked = self.__dict__.setdefault("_checked_stages", set())
        if stage not in checked or y.device.type == "cpu":
            check_batch(x, y, self.num_classes, f"{stage} batch {getattr(self, 'batch_index', 0)}")
            checked.add(stage)

    def guard_finite(self, terms: dict[str, Tensor], labels_bad: Tensor | None = None) -> None:
        """Stop training with a ``FloatingPointError`` naming the term that became NaN/inf.

        Recorded every step on the device; read back every step only where that
        costs no sync (one process on CPU), else every ``log_every_n_steps`` steps
        and at the epoch's last batch (see :class:`~gmnn.models.checks.FiniteLossGuard`),
        always inside the step, where every process takes part in the ``all_gather`` together.
        """
        guard = self.__dict__.setdefault("_finite_guard", FiniteLossGuard())
        guard.record(terms, self.global_step)
        labels = self.__dict__.setdefault("_batch_guards", {}).setdefault("train", BatchGuard())
        if labels_bad is not None:  # off the CPU, where every batch's labels cannot be read for free
            labels.record(labels_bad.new_zeros((), dtype=torch.float32), labels_bad, getattr(self, "batch_index", -1))
        trainer = self._trainer
        if trainer is None or (self.device.type == "cpu" and trainer.world_size == 1):
            guard.check()
            labels.check("train", self.num_classes)
        elif (self.global_step + 1) % trainer.log_every_n_steps == 0 or self.is_last_training_batch():
            gather = self.all_gather if trainer.world_size > 1 else None
            guard.check(gather)
            labels.check("train", self.num_classes, gather)
