"""Exact resume: stopping after epoch N and resuming with ``--ckpt_path last`` changes nothing."""

from __future__ import annotations

from pathlib import Path

import torch

from gmnn.cli import make_cli
from tests.test_cli import QUIET, ROOT

SMALL = ["--data.init_args.num_samples=480", "--data.init_args.batch_size=32", "--trainer.deterministic=true",
         "--figures.every_n_epochs=0"]  # figures are not what this test is about


def _fit(save_dir: Path, epochs: int, *extra: str):
    return make_cli(
        ["fit", "--config", str(ROOT / "configs/toy/topk.yaml"), f"--trainer.max_epochs={epochs}",
         f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL, *QUIET, *extra]
    )


def test_resume_from_last_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = _fit(tmp_path / "straight", 4)
    _fit(tmp_path / "resumed", 2)
    resumed = _fit(tmp_path / "resumed", 4, "--ckpt_path", "last")

    run_dirs = sorted((tmp_path / "resumed" / "gmnn").iterdir())
    assert [d.name for d in run_dirs] == ["version_0"], "the resumed run must continue in the same folder"
    assert resumed.trainer.current_epoch == 4 and resumed.trainer.global_step == straight.trainer.global_step
    expected, got = straight.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after resuming"
    metrics = {k: v for k, v in straight.trainer.callback_metrics.items() if k.startswith(("val/", "train/"))}
    assert "val/loss" in metrics and "val/acc" in metrics
    for name, value in metrics.items():
        assert torch.equal(resumed.trainer.callback_metrics[name], value), name


def test_last_with_no_earlier_run_starts_from_scratch(tmp_path: Path) -> None:
    cli = _fit(tmp_path, 1, "--ckpt_path", "last")
    assert cli.trainer.current_epoch == 1
    assert (tmp_path / "gmnn" / "version_0" / "checkpoints" / "last.ckpt").is_file()
