"""Every dataset protocol (configs/<dataset>/protocol.yaml) x every paper row (configs/methods/<row>.yaml):
the composed config builds the row's model with the protocol's architecture, logs its metrics and descends."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gmnn.cli import make_cli
from tests.config_checks import FIRST_STEP, check_run
from tests.data.fake_files import write_cifar10, write_cifar100, write_idx

ROOT = Path(__file__).resolve().parents[2]
DATASET_DIRS = ("mnist", "fmnist", "fmnist_mnist", "cifar10")
# the rows of the paper's table (gmnn.cli.reference.MNIST_ROWS, first stage), one method fragment each
ROWS = ("single", "dense", "importance", "sample_similarity", "attention_importance", "attention_similarity",
        "top1_stochastic", "stochastic")
PAIRS = [(dataset, row) for dataset in DATASET_DIRS for row in ROWS]
WRITERS = {
    "gmnn.data.MNISTDataModule": [lambda root: write_idx(root, "MNIST")],
    "gmnn.data.FashionMNISTDataModule": [lambda root: write_idx(root, "FashionMNIST")],
    "gmnn.data.FashionMNISTMNISTDataModule": [lambda root: write_idx(root, "FashionMNIST"), lambda root: write_idx(root, "MNIST")],
    "gmnn.data.CIFAR10DataModule": [write_cifar10],
    "gmnn.data.CIFAR100DataModule": [write_cifar100],
}
CLASSES = {"gmnn.data.FashionMNISTMNISTDataModule": 20, "gmnn.data.CIFAR100DataModule": 100}
SHAPES = {"gmnn.data.CIFAR10DataModule": (3, 32, 32), "gmnn.data.CIFAR100DataModule": (3, 32, 32)}


def test_every_dataset_folder_holds_only_its_protocol() -> None:
    for dataset in DATASET_DIRS:
        assert sorted(p.name for p in (ROOT / "configs" / dataset).glob("*.yaml")) == ["protocol.yaml"], dataset
    for row in ROWS:
        assert (ROOT / "configs" / "methods" / f"{row}.yaml").is_file(), row


@pytest.mark.parametrize(("dataset", "row"), PAIRS, ids=[f"{d}-{r}" for d, r in PAIRS])
def test_protocol_and_row_run_two_steps(dataset: str, row: str, tmp_path: Path) -> None:
    protocol, method = ROOT / "configs" / dataset / "protocol.yaml", ROOT / "configs" / "methods" / f"{row}.yaml"
    data_class = yaml.safe_load(protocol.read_text())["data"]["class_path"]
    for write in WRITERS[data_class]:
        write(tmp_path)
    # the shipped trainer settings (progress bar, summary, figures), on tiny files; 2 steps, not 1: the
    # one-cycle schedule of a 1-step run starts at its final learning rate (max_lr / 1e5). The protocol's
    # InitSearch runs with 2 candidates of 1 step (its 8 one-epoch candidates would take most of the time).
    cli = make_cli(
        ["fit", "--config", str(protocol), "--config", str(method), f"--data.init_args.root={tmp_path}",
         "--data.init_args.val_size=10", "--data.init_args.batch_size=8", "--trainer.fast_dev_run=2",
         "--trainer.callbacks.candidates=2", "--trainer.callbacks.steps=1", FIRST_STEP]
    )
    model = cli.model
    assert model.input_shape == SHAPES.get(data_class, (1, 28, 28))
    assert model.num_classes == cli.datamodule.num_classes == CLASSES.get(data_class, 10)
    assert cli.trainer.global_step == 2
    assert [type(c).__name__ for c in cli.trainer.callbacks].count("InitSearch") == 1  # the protocol's, kept
    check_run(cli, [protocol, method])  # the row's class and options on top of the protocol's, a finite loss
