"""gmnn's default progress bar: throttled Lightning bar by default, a user's own bar kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE

from gmnn.callbacks import progress
from gmnn.callbacks.progress import (
    REDRAWS_PER_SECOND,
    RichProgressBarAtRedrawRate,
    default_progress_bar,
    needs_default_progress_bar,
)
from gmnn.cli import make_cli

ROOT = Path(__file__).resolve().parents[2]


def _bars(args: list[str], tmp_path: Path) -> list[ProgressBar]:
    cli = make_cli(["--config", str(ROOT / "configs/toy/dense.yaml"), f"--trainer.default_root_dir={tmp_path}",
                    f"--trainer.logger.init_args.save_dir={tmp_path}", *args], run=False)
    return [callback for callback in cli.trainer.callbacks if isinstance(callback, ProgressBar)]


@pytest.mark.skipif(not _RICH_AVAILABLE, reason="the throttled bar is Rich's")
def test_the_default_bar_is_rich_redrawn_a_few_times_a_second(tmp_path: Path) -> None:
    bars = _bars([], tmp_path)
    assert len(bars) == 1 and type(bars[0]) is RichProgressBarAtRedrawRate and isinstance(bars[0], RichProgressBar)
    assert bars[0].refresh_rate == REDRAWS_PER_SECOND == 5  # Lightning's own default is 100


def test_training_batches_read_the_metrics_at_the_redraw_rate_and_always_move_the_bar(monkeypatch) -> None:
    bar, clock, read, moved = RichProgressBarAtRedrawRate(refresh_rate=5), [0.0], [], []
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(bar, "_update_metrics", lambda trainer, module: read.append(clock[0]))
    monkeypatch.setattr(bar, "_update", lambda task, current, **kwargs: moved.append(current))
    bar.train_progress_bar_id = 0  # a started bar's task
    for now in (0.0, 0.05, 0.15, 0.2, 0.3, 0.41, 0.45):
        clock[0] = now
        bar.on_train_batch_end(None, None, None, None, len(moved))
    assert moved == [1, 2, 3, 4, 5, 6, 7]  # the bar moves after every batch
    assert read == [0.0, 0.2, 0.41]  # the metrics at most every 1 / refresh_rate = 0.2 s
    bar.on_train_epoch_end(None, None)
    assert read[-1] == 0.45  # and at the epoch's end, due or not


def test_a_users_bar_is_kept_and_an_off_bar_stays_off(tmp_path: Path) -> None:
    bars = _bars(["--trainer.callbacks+=TQDMProgressBar", "--trainer.callbacks.refresh_rate=7"], tmp_path)
    assert len(bars) == 1 and type(bars[0]) is TQDMProgressBar and bars[0].refresh_rate == 7
    assert _bars(["--trainer.enable_progress_bar=false"], tmp_path) == []


def test_needs_default_progress_bar_reads_the_config_and_the_extra_callbacks() -> None:
    bar = TQDMProgressBar()
    assert needs_default_progress_bar({}, [])
    assert needs_default_progress_bar({"enable_progress_bar": True, "callbacks": None}, [])
    assert not needs_default_progress_bar({"enable_progress_bar": False}, [])
    assert not needs_default_progress_bar({"callbacks": bar}, [])  # one callback, not in a list
    assert not needs_default_progress_bar({"callbacks": [bar]}, [])
    assert not needs_default_progress_bar({}, [bar])
    assert isinstance(default_progress_bar(), RichProgressBar if _RICH_AVAILABLE else TQDMProgressBar)
