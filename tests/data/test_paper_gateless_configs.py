"""configs/paper/mnist_gateless/: the reference's two gate-less models, in gmnn's units (nats), training on MNIST files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.config_checks import fit_on_fake_mnist

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "paper" / "mnist_gateless").glob("*.yaml"))
LN2 = math.log(2)
# the reference's settings (bits) -> gmnn's options: T_bits ln 2, noise N(0, 1 bit) = ln 2 nats
EXPECTED = {
    "entropy": {"allocation": "entropy", "objective": "stochastic", "prediction": "argmax",
                "temperature": 10 * LN2, "allocation_noise": 0.0},
    "self_information": {"allocation": "loss", "objective": "argmax_expert", "prediction": "argmax",
                         "temperature": 1 * LN2, "allocation_noise": LN2},
}


def test_both_reference_models_have_a_config() -> None:
    assert [p.stem for p in CONFIGS] == sorted(EXPECTED)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_gateless_paper_config_trains_as_the_reference_model(config: Path, tmp_path: Path) -> None:
    assert f"gmnn fit --config configs/paper/mnist_gateless/{config.stem}.yaml" in config.read_text()
    cli = fit_on_fake_mnist(config, tmp_path)
    model = cli.model
    assert model.num_experts == 10 and model.gate is None
    for key, value in EXPECTED[config.stem].items():
        expected = pytest.approx(value, rel=1e-4) if isinstance(value, float) else value
        assert model.hparams[key] == expected, key
    (optimizer,) = cli.trainer.optimizers
    assert optimizer.defaults["lr"] == 0.001 and optimizer.defaults["weight_decay"] == 0.0
    assert isinstance(optimizer, torch.optim.Adam) and not cli.trainer.lr_scheduler_configs
