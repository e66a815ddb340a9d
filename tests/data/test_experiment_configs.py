"""Every dataset config (configs/<dataset>/) parses and trains one fast_dev_run step on generated files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gmnn.cli import make_cli
from tests.data.fake_files import write_cifar10, write_cifar100, write_idx

ROOT = Path(__file__).resolve().parents[2]
DATASET_DIRS = ("mnist", "fmnist", "fmnist_mnist", "cifar10")
CONFIGS = sorted(p for d in DATASET_DIRS for p in (ROOT / "configs" / d).glob("*.yaml"))
WRITERS = {
    "gmnn.data.MNISTDataModule": [lambda root: write_idx(root, "MNIST")],
    "gmnn.data.FashionMNISTDataModule": [lambda root: write_idx(root, "FashionMNIST")],
    "gmnn.data.FashionMNISTMNISTDataModule": [lambda root: write_idx(root, "FashionMNIST"), lambda root: write_idx(root, "MNIST")],
    "gmnn.data.CIFAR10DataModule": [write_cifar10],
    "gmnn.data.CIFAR100DataModule": [write_cifar100],
}
SHAPES = {"gmnn.data.CIFAR10DataModule": (3, 32, 32), "gmnn.data.CIFAR100DataModule": (3, 32, 32)}


def test_every_dataset_has_configs() -> None:
    assert {p.parent.name for p in CONFIGS} == set(DATASET_DIRS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_runs_a_fast_dev_run_step(config: Path, tmp_path: Path) -> None:
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"]
    for write in WRITERS[data_class]:
        write(tmp_path)
    cli = make_cli(
        ["fit", "--config", str(config), f"--data.init_args.root={tmp_path}", "--data.init_args.val_size=10",
         "--data.init_args.batch_size=8", "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false",
         "--trainer.enable_model_summary=false"]
    )
    model = cli.model
    assert model.input_shape == SHAPES.get(data_class, (1, 28, 28))
    assert model.num_classes == cli.datamodule.num_classes
    assert cli.trainer.global_step == 1 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
