"""DDP on CPU: two gloo processes train, log once, and report the metrics a single process computes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmnn.data import ToyDataModule
from gmnn.models import MoEModule
from tests.conftest import tiny_trainer
from tests.test_cli import ROOT

# 800 samples: 120 validation samples, 60 per process, so no sample is repeated to even out the ranks
DATA = dict(problem="checkerboard", num_samples=800, batch_size=32)


def _last_logged(run_dir: Path, prefix: str) -> dict[str, float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith(prefix)}


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_single_process_evaluation(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "gmnn.cli", "fit", "--config", str(ROOT / "configs/toy/dense.yaml"),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        *(f"--data.init_args.{key}={value}" for key, value in DATA.items()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr, "the second process did not start"

    runs = list((tmp_path / "gmnn").iterdir())
    assert [run.name for run in runs] == ["version_0"], "only rank zero may create a run folder"
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1, "only rank zero may write events"
    logged = _last_logged(runs[0], "val/")
    assert {"val/loss", "val/acc"} <= set(logged)

    model = MoEModule.load_from_checkpoint(runs[0] / "checkpoints" / "last.ckpt")
    (single,) = tiny_trainer().validate(model, datamodule=ToyDataModule(**DATA), verbose=False)
    assert set(logged) <= set(single), "every metric logged under DDP must exist in one process"
    for name, value in logged.items():  # torchmetrics and sync_dist must give the whole validation set's value
        torch.testing.assert_close(value, single[name], rtol=1e-5, atol=1e-6, msg=name)
