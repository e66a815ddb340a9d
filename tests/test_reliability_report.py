"""`gmnn report` on imperfect run folders: unreadable, damaged and special files never stop or skew the table."""

from __future__ import annotations

import builtins
import csv
import errno
import io
import os
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from gmnn.cli import main


def _run(run_dir: Path, test_acc: float) -> Path:
    """A finished run logging ``test/acc`` (five steps, the last one counts); its events file."""
    writer = SummaryWriter(str(run_dir))
    for step in range(5):
        writer.add_scalar("test/acc", test_acc - 0.1 * (4 - step), step)
    writer.add_scalar("test/mutual_information", 1.0, 4)
    writer.close()
    return next(run_dir.glob("events.out.tfevents.*"))


def _summary(out: Path) -> dict[str, str]:
    (summary,) = list(csv.DictReader((out / "results_summary.csv").open()))
    return summary


def _deny_reading(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make ``path`` unreadable, also for root (who ignores the mode bits): opening it raises ``PermissionError``."""
    path.chmod(0)
    real_open = io.open

    def guarded_open(file: object, *args: object, **kwargs: object) -> object:
        if isinstance(file, (str, bytes, os.PathLike)) and Path(os.fsdecode(file)).resolve() == path.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(builtins, "open", guarded_open)


def test_an_unreadable_events_file_is_skipped_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs" / "dense"
    _run(runs / "version_0", 0.8)
    _run(runs / "version_1", 0.6)
    locked = _run(runs / "version_2", 0.2)
    _deny_reading(monkeypatch, locked)
    out = tmp_path / "out"
    main(["report", str(tmp_path / "runs"), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(locked) in lines[0] and "permission denied" in lines[0].lower()
    summary = _summary(out)
    assert summary["runs"] == "2" and float(summary["test_error_mean"]) == pytest.approx(0.3)


def test_truncated_and_corrupt_events_files_are_not_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs" / "dense"
    _run(runs / "version_0", 0.8)
    truncated = _run(runs / "version_1", 0.6)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # what a killed writer leaves: TensorBoard reads the first values only
    garbage = runs / "version_2" / "events.out.tfevents.0.host.1.0"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not an events file\n" * 10)
    flipped = _run(runs / "version_3", 0.4)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one damaged byte: TensorBoard stops there, silently
    flipped.write_bytes(bytes(data))
    empty = runs / "version_4" / "events.out.tfevents.0.host.1.0"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    out = tmp_path / "out"
    main(["report", str(tmp_path / "runs"), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    for damaged in (truncated, garbage, flipped, empty):
        assert sum(str(damaged) in line for line in lines) == 1, (damaged, lines)
    summary = _summary(out)
    assert summary["runs"] == "1" and float(summary["test_error_mean"]) == pytest.approx(0.2)
    assert [Path(row["run"]).name for row in csv.DictReader((out / "results.csv").open())] == ["version_0"]


def test_the_table_says_how_many_runs_each_mean_is_over(tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "dense"
    _run(runs / "version_0", 0.8)
    _run(runs / "version_1", 0.6)
    writer = SummaryWriter(str(runs / "version_2"))  # a run that logged no test metrics (fit only)
    writer.add_scalar("train/acc", 0.9, 0)
    writer.close()
    out = tmp_path / "out"
    main(["report", str(tmp_path / "runs"), "--out", str(out)])
    summary = _summary(out)
    assert summary["runs"] == "3"
    assert summary["test_error_n"] == "2" and summary["train_error_n"] == "1" and summary["per_task_entropy_n"] == "0"
    table = (out / "results.md").read_text()
    assert "| dense | 3 | 0.100 ± 0.000 (n=1) | 0.300 ± 0.141 (n=2) | 1.000 ± 0.000 (n=2) |" in table


@pytest.mark.timeout(30)
def test_a_fifo_named_like_a_run_file_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs" / "dense"
    _run(runs / "version_0", 0.8)
    os.mkfifo(runs / "version_0" / "events.out.tfevents.0.host.2.0")  # opening it for reading waits for a writer
    (runs / "version_1").mkdir()
    os.mkfifo(runs / "version_1" / "metrics.csv")
    out = tmp_path / "out"
    main(["report", str(tmp_path / "runs"), "--out", str(out)])
    summary = _summary(out)
    assert summary["runs"] == "1" and float(summary["test_error_mean"]) == pytest.approx(0.2)
