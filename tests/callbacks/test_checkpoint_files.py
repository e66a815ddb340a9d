"""AtomicModelCheckpoint: files made durable on a thread of their own, in order, all in place when fit returns."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from gmnn.callbacks import checkpoint
from gmnn.cli import main, make_cli

ROOT = Path(__file__).resolve().parents[2]


def _args(save_dir: Path, epochs: int, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), f"--trainer.max_epochs={epochs}",
            f"--trainer.logger.init_args.save_dir={save_dir}", "--data.init_args.num_samples=400",
            "--data.init_args.batch_size=50", *extra]


def test_slow_disks_still_leave_every_checkpoint_in_place_when_fit_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads, order = set(), []
    fsync = checkpoint._fsync

    def slow_fsync(path: str | Path, directory: bool = False) -> None:
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        fsync(path, directory)
        order.append(("fsync", Path(path).name))

    monkeypatch.setattr(checkpoint, "_fsync", slow_fsync)
    cli = make_cli(_args(tmp_path, 4, "--checkpoint.save_top_k=1"))
    folder = tmp_path / "gmnn" / "version_0" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    best = Path(cli.trainer.checkpoint_callback.best_model_path).name
    assert names == sorted({best, "last.ckpt"}) and not any(n.endswith(".partial") for n in names)
    assert all(name.startswith("gmnn-checkpoint") for name in threads)  # never the training thread
    # each file was flushed before its folder, every time
    flushed = [name for kind, name in order]
    assert flushed.count("checkpoints") == flushed.count("last.ckpt.partial") + sum(n.startswith("best") for n in flushed)


def test_an_older_best_is_removed_only_after_the_new_one_is_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    durable = checkpoint.make_durable

    def recorded(partial: str, filepath: str) -> None:
        time.sleep(0.05)
        durable(partial, filepath)
        if Path(filepath).name.startswith("best-"):  # last.ckpt's own thread may run before the first best is in place
            seen.append((Path(filepath).name, sorted(p.name for p in Path(filepath).parent.glob("best-*.ckpt"))))

    monkeypatch.setattr(checkpoint, "make_durable", recorded)
    make_cli(_args(tmp_path, 4))  # val/loss falls every early epoch: a new best that replaces the one before
    final = sorted(p.name for p in (tmp_path / "gmnn" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    assert len(final) == 1
    replaced = [names for _, names in seen if len(names) == 2]
    assert replaced, seen  # when a new best was in place, the one it replaces was still there
    assert all(name in names and len(names) in (1, 2) for name, names in seen), seen  # never an older one left


def test_a_failed_flush_is_reported_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def full(path: str | Path, directory: bool = False) -> None:
        if str(path).endswith("last.ckpt.partial"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "_fsync", full)
    with pytest.raises(SystemExit) as exit_:
        main(_args(tmp_path, 2))
    assert exit_.value.code == 1 and "the disk is full" in capsys.readouterr().err
    folder = tmp_path / "gmnn" / "version_0" / "checkpoints"
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".partial") or p.name == "last.ckpt"]


def test_after_a_failed_flush_the_best_it_was_to_replace_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    durable = checkpoint.make_durable

    def failing(partial: str, filepath: str) -> None:
        if Path(filepath).name == "best-epoch=1.ckpt":
            time.sleep(0.05)  # the removal of best-epoch=0 is queued behind it
            raise OSError(errno.ENOSPC, "No space left on device", partial)
        durable(partial, filepath)

    monkeypatch.setattr(checkpoint, "make_durable", failing)
    with pytest.raises(SystemExit):
        main(_args(tmp_path, 3))
    assert "the disk is full" in capsys.readouterr().err
    names = {p.name for p in (tmp_path / "gmnn" / "version_0" / "checkpoints").iterdir()}
    assert "best-epoch=0.ckpt" in names and "best-epoch=1.ckpt" not in names
