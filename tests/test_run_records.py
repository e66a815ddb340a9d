"""A run's record survives everything another command does: other experiments with ``--ckpt_path last``,
refused resumes, ``report --retest``, a full disk, truncated checkpoints. Commands run with the shipped
defaults (progress bar, figures, summary)."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest
import torch

from gmnn.cli import main, make_cli
from gmnn.cli.report import retest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data.init_args.num_samples=400", "--data.init_args.batch_size=50"]


def _fit_args(save_dir: Path, epochs: int, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), f"--trainer.max_epochs={epochs}",
            f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL, *extra]


def _fit(save_dir: Path, epochs: int, *extra: str):
    return make_cli(_fit_args(save_dir, epochs, *extra))


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``gmnn ARGS`` in this process: its exit status and stderr."""
    capsys.readouterr()  # drop what earlier commands printed (e.g. their fit summary)
    try:
        main(args)
        status = 0
    except SystemExit as exit_:
        status = int(exit_.code or 0)
    return status, capsys.readouterr().err


def test_last_of_another_experiment_starts_a_new_run_and_leaves_the_old_one_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _fit(tmp_path, 2)
    old_run = tmp_path / "gmnn" / "version_0"
    before = _snapshot(old_run)
    assert {"config.yaml", "checkpoints/last.ckpt"} <= set(before)
    capsys.readouterr()

    second = _fit(tmp_path, 2, "--model.init_args.lr=0.02", "--ckpt_path", "last")
    err = capsys.readouterr().err
    assert "is another experiment (model.init_args.lr: 0.01 -> 0.02)" in err
    assert _snapshot(old_run) == before, "the other experiment's run folder must not change"
    assert Path(second.trainer.log_dir).name == "version_1"
    assert second.trainer.global_step == first.trainer.global_step, "the new experiment trains from scratch"
    assert second.model.hparams.lr == 0.02
    weights = [cli.model.state_dict()["gate.head.weight"] for cli in (first, second)]
    assert not torch.equal(*weights)


def test_same_experiment_resumes_and_keeps_its_config_record(tmp_path: Path) -> None:
    _fit(tmp_path, 1)
    run = tmp_path / "gmnn" / "version_0"
    record = (run / "config.yaml").read_bytes()
    resumed = _fit(tmp_path, 2, "--ckpt_path", "last")
    assert resumed.trainer.current_epoch == 2 and Path(resumed.trainer.log_dir) == run
    assert (run / "config.yaml").read_bytes() == record, "a resume must not rewrite the run's record"
    assert "max_epochs: 2" in (run / "config.resumed-1.yaml").read_text()


def test_refused_resume_and_retest_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fit(tmp_path, 1)
    run = tmp_path / "gmnn" / "version_0"
    before = _snapshot(run)
    last = run / "checkpoints" / "last.ckpt"
    status, err = _run(
        ["fit", "--config", str(ROOT / "configs/toy/topk.yaml"), f"--trainer.logger.init_args.save_dir={tmp_path}",
         *SMALL, "--ckpt_path", str(last)], capsys,
    )
    assert status == 1 and "holds a DenseMoE" in err
    retest(run)
    assert _snapshot(run) == before
    assert sorted(p.name for p in (tmp_path / "gmnn").iterdir()) == ["version_0"]


def test_no_logger_writes_no_config_into_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path / "unused", 1, "--trainer.logger=false")
    assert not (tmp_path / "config.yaml").exists()


def _full_disk_on_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every checkpoint write stores half its bytes, then fails as a full filesystem does."""
    import lightning_fabric.plugins.io.torch_io as torch_io

    def write_half(checkpoint: dict, filepath: str) -> None:
        data = __import__("io").BytesIO()
        torch.save(checkpoint, data)
        Path(filepath).write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", filepath)

    monkeypatch.setattr(torch_io, "_atomic_save", write_half)


def test_full_disk_keeps_the_previous_last_checkpoint_and_resume_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = _fit(tmp_path / "straight", 3)
    _fit(tmp_path, 2)
    checkpoints = tmp_path / "gmnn" / "version_0" / "checkpoints"
    before = _snapshot(checkpoints)
    with monkeypatch.context() as patch:
        _full_disk_on_write(patch)
        status, err = _run(_fit_args(tmp_path, 3, "--ckpt_path", "last"), capsys)
    assert status == 1
    assert "the disk is full" in err and "No space left on device" in err and len(err.strip().splitlines()) == 2
    assert _snapshot(checkpoints) == before, "a failed write must leave the earlier checkpoints whole, and no partial file"
    resumed = _fit(tmp_path, 3, "--ckpt_path", "last")
    assert resumed.trainer.current_epoch == 3
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=name)


def test_disk_full_while_logging_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch.utils.tensorboard import SummaryWriter

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_scalar", no_space)
    status, err = _run(_fit_args(tmp_path, 1, "--trainer.log_every_n_steps=1"), capsys)
    assert status == 1 and "the disk is full" in err and "you tried to log" not in err


def test_truncated_last_checkpoint_falls_back_to_the_newest_readable_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit(tmp_path, 2)
    checkpoints = tmp_path / "gmnn" / "version_0" / "checkpoints"
    (best,) = checkpoints.glob("best-*.ckpt")
    last = checkpoints / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    resumed = _fit(tmp_path, 3, "--ckpt_path", "last")
    err = capsys.readouterr().err
    assert f"skipping {last}: it is truncated or not a checkpoint" in err
    assert f"resuming from the newest readable checkpoint {best}" in err
    assert resumed.trainer.ckpt_path == str(best)
    best_epoch = int(best.stem.split("=")[1])
    assert resumed.trainer.current_epoch == 3 and best_epoch in (0, 1)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_checkpoint_passed_explicitly_is_one_line_naming_it(
    damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fit(tmp_path, 1)
    last = tmp_path / "gmnn" / "version_0" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:500] if damage == "truncated" else b"")
    status, err = _run(_fit_args(tmp_path, 2, "--ckpt_path", str(last)), capsys)
    first_line = err.strip().splitlines()[0]
    assert status == 1 and first_line.startswith(f"gmnn: error: --ckpt_path {last} cannot be read")
    assert ("empty (0 bytes)" if damage == "empty" else "truncated") in first_line
