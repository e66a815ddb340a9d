"""How a gmnn model runs its stages' steps and logs a per-batch mean with ``self.log``."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def log_options(stage: str, batch_size: int) -> dict[str, Any]:
    """``self.log`` options of a per-batch mean: per step and epoch in training, per epoch and
    synced over processes (a sample-weighted mean of the whole set) in evaluation.

    The batch size is passed as a float: Lightning sums the per-process batch
    counts with an integer mean (``(301 + 300) / 2 = 300``) when they are
    integers, which skews every synced mean once the unpadded shards of an
    odd-sized evaluation set differ by one sample.
    """
    training = stage == "train"
    return dict(on_step=training, on_epoch=True,
                batch_size=batch_size if training else float(batch_size), sync_dist=not training)


class StageSteps:
    """``training_step``, ``validation_step`` and ``test_step`` as one ``shared_step(batch, stage)``.

    A model defines ``shared_step(batch, stage) -> (loss, output)``; each step returns the loss.
    """

    def shared_step(self, batch: Any, stage: str) -> tuple[Tensor, Any]:
        raise NotImplementedError(f"{type(self).__name__} must define shared_step(batch, stage)")

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")[0]

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "val")[0]

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "test")[0]
