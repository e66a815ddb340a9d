"""LightningCLI's ``--optimizer`` / ``--lr_scheduler`` replace gmnn's default (fused Adam, its schedules),
and a learning-rate monitor logs whenever a schedule runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmnn.cli import main, make_cli

ROOT = Path(__file__).resolve().parents[1]


def _fit(tmp_path: Path, *extra: str):
    return make_cli(["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=2",
                     f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.init_args.num_samples=400",
                     "--data.init_args.batch_size=70", "--trainer.log_every_n_steps=1", *extra])


def _scalars(run: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def test_optimizer_and_schedule_from_the_command_line(tmp_path: Path) -> None:
    cli = _fit(tmp_path, "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.1", "--optimizer.momentum", "0.5",
               "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "1",
               "--lr_scheduler.gamma", "0.5")
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["momentum"] == 0.5
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)  # stepped once per epoch, 2 epochs
    logged = _scalars(Path(cli.trainer.log_dir), "lr-SGD")
    assert logged[0] == pytest.approx(0.1) and logged[-1] == pytest.approx(0.05)  # per step, during epoch 2


def test_default_stays_fused_adam_and_its_cosine_schedule_is_logged(tmp_path: Path) -> None:
    cli = _fit(tmp_path, "--model.init_args.scheduler=cosine")
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["fused"]
    logged = _scalars(Path(cli.trainer.log_dir), "lr-Adam")
    steps, lr = cli.trainer.global_step, cli.model.hparams.lr
    expected = [lr * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)]  # cosine to 0, logged before each step
    assert logged == pytest.approx(expected, rel=1e-5)


def test_optimizer_for_a_manually_optimized_variant_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/toy/protocol.yaml"), "--config", str(ROOT / "configs/methods/dual_temperature.yaml"),
              "--optimizer", "torch.optim.SGD",
              "--optimizer.lr", "0.1", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert exit_info.value.code == 1
    assert "--optimizer: DualTemperatureMoE steps its own optimizers" in capsys.readouterr().err
