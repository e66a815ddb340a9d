"""Every dataset config (configs/<dataset>/) builds the model it names, logs its metrics and descends in one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gmnn.cli import make_cli
from tests.config_checks import FIRST_STEP, check_run
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
CLASSES = {"gmnn.data.FashionMNISTMNISTDataModule": 20, "gmnn.data.CIFAR100DataModule": 100}
SHAPES = {"gmnn.data.CIFAR10DataModule": (3, 32, 32), "gmnn.data.CIFAR100DataModule": (3, 32, 32)}


def test_every_dataset_has_configs() -> None:
    assert {p.parent.name for p in CONFIGS} == set(DATASET_DIRS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_runs_a_fast_dev_run_step(config: Path, tmp_path: Path) -> None:
    data_class = yaml.safe_load(config.read_text())["data"]["class_path"]
    for write in WRITERS[data_class]:
        write(tmp_path)
    # the shipped trainer settings (progress bar, summary, figures), on tiny files; 2 steps, not 1: the
    # one-cycle schedule of a 1-step run starts at its final learning rate (max_lr / 1e5)
    cli = make_cli(
        ["fit", "--config", str(config), f"--data.init_args.root={tmp_path}", "--data.init_args.val_size=10",
         "--data.init_args.batch_size=8", "--trainer.fast_dev_run=2", FIRST_STEP]
    )
    model = cli.model
    assert model.input_shape == SHAPES.get(data_class, (1, 28, 28))
    assert model.num_classes == cli.datamodule.num_classes == CLASSES.get(data_class, 10)
    assert cli.trainer.global_step == 2
    check_run(cli, config)
