"""How a gmnn model logs a per-batch mean with ``self.log``."""

from __future__ import annotations

from typing import Any


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
