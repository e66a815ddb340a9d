"""gmnn's default progress bar: Lightning's own, redrawn a few times a second instead of after every batch.

Lightning's ``RichProgressBar`` asks its drawing thread for a redraw after every batch and lets
it redraw up to ``refresh_rate = 100`` times a second. Drawing a Rich bar holds the interpreter
lock, so a small model that steps many times a second spends a noticeable share of its training
time waiting for its own progress bar. Five redraws a second look the same to a person.

Without ``rich`` installed Lightning's ``TQDMProgressBar`` is used as Lightning would choose it.
"""

from __future__ import annotations

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


def default_progress_bar() -> ProgressBar:
    """A ``RichProgressBar`` redrawn :data:`REDRAWS_PER_SECOND` times a second (``TQDMProgressBar`` without rich)."""
    return RichProgressBar(refresh_rate=REDRAWS_PER_SECOND) if _RICH_AVAILABLE else TQDMProgressBar()


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
