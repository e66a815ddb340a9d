"""Exact resume: stopping after epoch N and resuming with ``--ckpt_path last`` changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmnn.cli import make_cli
from tests.test_cli import ROOT

SMALL = ["--data.init_args.num_samples=480", "--data.init_args.batch_size=32", "--trainer.deterministic=true",
         "--figures.every_n_epochs=0"]  # figures are not what this test is about


SCHEDULED_TOPK = [  # a temperature that decays from epoch 1, and a regularizer
    "configs/toy/topk.yaml", "--model.init_args.temperature=2.0", "--model.init_args.temperature_decay=0.5",
    "--model.init_args.temperature_decay_start=1", "--model.init_args.temperature_min=0.1",
    "--model.init_args.regularizers={importance: 0.2}",
]
TOY = "configs/toy/protocol.yaml"  # the method fragments follow it
STOCHASTIC = [TOY, "--config", str(ROOT / "configs/methods/stochastic.yaml")]  # samples an expert per sample: needs the random state back
INIT_SEARCH = [TOY, "--config", str(ROOT / "configs/methods/init_search.yaml"), "--trainer.callbacks.candidates=2"]  # skipped when resuming


def _fit(save_dir: Path, epochs: int, config: list[str], *extra: str):
    return make_cli(
        ["fit", "--config", str(ROOT / config[0]), *config[1:], f"--trainer.max_epochs={epochs}",
         f"--trainer.logger.init_args.save_dir={save_dir}", *SMALL, *extra]
    )


@pytest.mark.parametrize("config", [SCHEDULED_TOPK, STOCHASTIC, INIT_SEARCH],
                         ids=["topk_schedule_regularizer", "stochastic", "init_search"])
def test_resume_from_last_equals_an_uninterrupted_run(
    config: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = _fit(tmp_path / "straight", 4, config)
    _fit(tmp_path / "resumed", 2, config)
    capsys.readouterr()
    resumed = _fit(tmp_path / "resumed", 4, config, "--ckpt_path", "last")
    assert "InitSearch:" not in capsys.readouterr().out, "a resumed run must not search initialisations again"

    run_dirs = sorted((tmp_path / "resumed").glob("*/version_*"))
    assert [d.name for d in run_dirs] == ["version_0"], "the resumed run must continue in the same folder"
    assert resumed.trainer.current_epoch == 4 and resumed.trainer.global_step == straight.trainer.global_step
    assert resumed.model.temperature == straight.model.temperature
    expected, got = straight.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after resuming"
    metrics = {k: v for k, v in straight.trainer.callback_metrics.items()
               if k.startswith(("val/", "train/")) and k != "train/init_search_best_nll"}  # logged by the search only
    assert "val/loss" in metrics and "val/acc" in metrics
    if config is SCHEDULED_TOPK:
        assert {"train/temperature", "train/reg/importance"} <= set(metrics) and straight.model.temperature < 2.0
    for name, value in metrics.items():
        assert torch.equal(resumed.trainer.callback_metrics[name], value), name


def test_last_with_no_earlier_run_starts_from_scratch(tmp_path: Path) -> None:
    cli = _fit(tmp_path, 1, SCHEDULED_TOPK, "--ckpt_path", "last")
    assert cli.trainer.current_epoch == 1
    assert (tmp_path / "gmnn" / "version_0" / "checkpoints" / "last.ckpt").is_file()
