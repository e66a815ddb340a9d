"""Every config under configs/methods runs ``fit`` with fast_dev_run and logs its values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gmnn.cli import make_cli
from gmnn.models import DenseMoE

ROOT = Path(__file__).resolve().parents[2]
METHOD_CONFIGS = sorted((ROOT / "configs" / "methods").glob("*.yaml"))
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _experts_checkpoint(path: Path, expert_hidden: list[int]) -> str:
    """A checkpoint with 4 MLP experts on 2-D inputs, as the config expects."""
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=4, expert_hidden=expert_hidden)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_method_config_runs_fast_dev_run(config: Path, tmp_path: Path) -> None:
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    extra = []
    if init_args.get("init_experts_from"):
        extra.append(f"--model.init_args.init_experts_from={_experts_checkpoint(tmp_path / 'experts.ckpt', init_args['expert_hidden'])}")
    cli = make_cli(
        ["fit", "--config", str(config), "--trainer.fast_dev_run=true", "--data.init_args.num_samples=600",
         f"--trainer.logger.init_args.save_dir={tmp_path}", *QUIET, *extra]
    )
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    assert "train/temperature" in metrics
    for name in init_args.get("regularizers", {}):
        assert f"train/reg/{name}" in metrics, f"{name} not logged: {sorted(metrics)}"
