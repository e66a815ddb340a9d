"""gmnn's default progress bar: Lightning's own, redrawn a few times a second instead of after every batch.

Lightning's ``RichProgressBar`` asks its drawing thread for a redraw after every batch and lets
it redraw up to ``refresh_rate = 100`` times a second. Drawing a Rich bar holds the interpreter
lock, so a small model that steps many times a second spends a noticeable share of its training
time waiting for its own progress bar. Five redraws a second look the same to a person.

It also rebuilds the line of logged metrics after every training batch (reading every progress-bar
value back from the trainer), though the line is only redrawn ``refresh_rate`` times a second:
:class:`RichProgressBarAtRedrawRate` reads them at that rate during an epoch, and at its end as
Lightning does.

Without ``rich`` installed Lightning's ``TQDMProgressBar`` is used as Lightning would choose it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from gmnn.pl import (
    _RICH_AVAILABLE,
    Callback,
    ProgressBar,
    RichProgressBar,
    TQDMProgressBar,
)

REDRAWS_PER_SECOND = 5


class RichProgressBarAtRedrawRate(RichProgressBar):
    """Lightning's ``RichProgressBar`` that reads the logged metrics for its line at the rate it redraws.

    After a training batch that ends less than ``1 / refresh_rate`` seconds after the last reading,
    only the bar moves; the line of metrics is read again at the next batch that is due, at the end
    of the epoch and after validation (as Lightning's bar reads it there). All arguments are
    ``RichProgressBar``'s.
    """

    _metrics_read_at = -math.inf

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        if self.is_disabled or now - self._metrics_read_at >= 1 / self.refresh_rate:
            self._metrics_read_at = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if self.train_progress_bar_id is None:  # as Lightning's: a run resumed in the middle of an epoch
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, batch_idx + 1)


def default_progress_bar() -> ProgressBar:
    """A :class:`RichProgressBarAtRedrawRate` redrawn :data:`REDRAWS_PER_SECOND` times a second
    (``TQDMProgressBar`` without rich)."""
    return RichProgressBarAtRedrawRate(refresh_rate=REDRAWS_PER_SECOND) if _RICH_AVAILABLE else TQDMProgressBar()


def needs_default_progress_bar(trainer_config: dict[str, Any], callbacks: Iterable[Callback]) -> bool:
    """Whether a trainer built from ``trainer_config`` plus ``callbacks`` would get Lightning's default bar.

    That is when the progress bar is on (``enable_progress_bar`` true or unset) and no
    :class:`~pytorch_lightning.callbacks.ProgressBar` was given: a user's own bar is kept as it is.
    """
    if trainer_config.get("enable_progress_bar") is False:
        return False
    given = trainer_config.get("callbacks") or []
    given = given if isinstance(given, list) else [given]
    return not any(isinstance(callback, ProgressBar) for callback in [*given, *callbacks])
