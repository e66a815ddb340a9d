"""The ``gmnn`` command and every shipped config."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from gmnn.cli import make_cli
from gmnn.models import MoEModule

ROOT = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TOY_CONFIGS = sorted((ROOT / "configs" / "toy").glob("*.yaml"))


def test_help_lists_the_subcommands() -> None:
    result = subprocess.run([sys.executable, "-m", "gmnn.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("fit", "validate", "test", "predict"):
        assert command in result.stdout
    assert "Warning" not in result.stderr, result.stderr


def test_the_readme_first_command_prints_no_warning(tmp_path: Path) -> None:
    """The first command users run, with the shipped defaults, as a fresh process, as users run it."""
    result = subprocess.run(
        [sys.executable, "-m", "gmnn.cli", "fit", "--config", str(ROOT / "configs/toy/dense.yaml"),
         "--trainer.max_epochs=1", "--data.init_args.num_samples=600"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr and "deprecated" not in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_passes_print_config(config: Path) -> None:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(stdout.getvalue())
    assert printed["model"]["class_path"] == yaml.safe_load(config.read_text())["model"]["class_path"]


def test_data_sizes_are_linked_into_the_model(tmp_path: Path) -> None:
    cli = make_cli(
        ["--config", str(ROOT / "configs/toy/dense.yaml"), "--data.init_args.problem=gaussian_clusters",
         f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    assert cli.model.num_classes == 3 and cli.model.input_shape == (2,)


@pytest.mark.parametrize("config", TOY_CONFIGS, ids=lambda p: p.stem)
def test_fit_writes_a_checkpoint_and_events_that_reload(config: Path, tmp_path: Path) -> None:
    cli = make_cli(
        ["fit", "--config", str(config), "--trainer.max_epochs=2", "--data.init_args.num_samples=600",
         f"--trainer.logger.init_args.save_dir={tmp_path}"]
    )
    run_dir = Path(cli.trainer.logger.log_dir)
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "config.yaml").exists()
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.exists() and best.name.startswith("best-")
    # the checkpoint is the model at the end of training
    model = cli.model.eval()
    reloaded = MoEModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    assert type(reloaded) is type(model)
    x = torch.randn(16, 2)
    torch.testing.assert_close(reloaded(x).log_probs, model(x).log_probs)


def test_test_and_predict_from_a_checkpoint(tmp_path: Path) -> None:
    config = str(ROOT / "configs/toy/dense.yaml")
    common = ["--config", config, "--data.init_args.num_samples=400", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    fit = make_cli(["fit", "--trainer.max_epochs=1", *common])
    ckpt = str(Path(fit.trainer.logger.log_dir) / "checkpoints" / "last.ckpt")
    test = make_cli(["test", "--ckpt_path", ckpt, *common])
    assert 0.0 <= test.trainer.callback_metrics["test/acc"] <= 1.0
    predict = make_cli(["predict", "--ckpt_path", ckpt, *common])
    batches = predict.trainer.predict_loop.predictions
    assert batches and batches[0]["probs"].shape[1] == 8  # split_discs: 8 classes
    torch.testing.assert_close(batches[0]["probs"].sum(-1), torch.ones(len(batches[0]["probs"])))
