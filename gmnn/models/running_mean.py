"""A per-epoch running mean of per-sample vectors, kept on the device and read once."""

from __future__ import annotations

import torch
from torch import Tensor


class RunningMean:
    """Mean over samples of rows ``[B, D]`` added batch by batch, in float64, without a host sync.

    Used for values that are logged once per epoch rather than per step: one
    ``add`` per step costs one small kernel, where logging them would cost ``D``
    calls to ``LightningModule.log``, each far dearer.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every row added so far."""
        self.total: Tensor | None = None
        self.count = 0

    def add(self, rows: Tensor) -> None:
        """Add the rows ``[B, D]`` of one batch."""
        batch_total = rows.sum(dim=0, dtype=torch.float64)
        self.total = batch_total if self.total is None else self.total + batch_total
        self.count += rows.shape[0]

    def mean(self) -> Tensor | None:
        """The mean row ``[D]`` (float64), or ``None`` when nothing was added."""
        return None if self.total is None or self.count == 0 else self.total / self.count

    def as_logged(self, prefix: str) -> dict[str, Tensor]:
        """``{f"{prefix}{i}": mean_i}`` for ``self.log_dict``; empty when nothing was added."""
        if self.total is None or self.count == 0:
            return {}
        mean = self.total / self.count
        return {f"{prefix}{i}": mean[i] for i in range(mean.shape[0])}
