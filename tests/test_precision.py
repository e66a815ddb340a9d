"""Lightning's precision settings through the ``gmnn`` command, figures on: the module trains in the
precision asked for, and the decomposition metrics (kept in float64) equal a hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gmnn.cli import main, make_cli

ROOT = Path(__file__).resolve().parents[1]
PARAM_DTYPE = {"bf16-mixed": torch.float32, "bf16-true": torch.bfloat16, "64-true": torch.float64}


def _fit(tmp_path: Path, precision: str, *extra: str):
    return make_cli(
        ["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=1",
         f"--trainer.precision={precision}", f"--trainer.logger.init_args.save_dir={tmp_path}",
         "--data.init_args.num_samples=400", "--data.init_args.batch_size=50", *extra]
    )


@pytest.mark.parametrize("precision", sorted(PARAM_DTYPE))
def test_trains_in_the_precision_and_logs_exact_usage(precision: str, tmp_path: Path) -> None:
    cli = _fit(tmp_path, precision)
    model = cli.model
    assert {p.dtype for p in model.parameters()} == {PARAM_DTYPE[precision]}
    assert model.decomposition["val"]["expert_usage"].gate_sum.dtype == torch.float64
    logged = float(cli.trainer.callback_metrics["val/expert_usage"])

    model.eval()
    plugin = cli.trainer.precision_plugin
    with torch.no_grad(), plugin.forward_context():  # batch by batch, as the validation loop ran
        gate = torch.cat([model(plugin.convert_input(x)).gate_probs.double() for x, _ in cli.datamodule.val_dataloader()])
    mean = gate.mean(0)
    usage_bits = -(mean * mean.log()).sum().item() / math.log(2)
    assert math.isfinite(logged)
    assert logged == pytest.approx(usage_bits, abs=1e-5)


def test_pure_float16_training_is_refused_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.precision=16-true",
              f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.init_args.num_samples=400"])
    assert exit_info.value.code == 1
    assert "precision='16-true' cannot train" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("argument", ["temperature=1e-45", "temperature_min=1e-9"])
def test_underflowing_temperature_is_refused_at_construction(argument: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), f"--model.init_args.{argument}",
              "--model.init_args.temperature_decay=0.1", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert exit_info.value.code == 1
    name = argument.split("=")[0]
    assert f"{name} must be >= 0.0001" in capsys.readouterr().err
