"""Bad data gets a one-line error naming the file or the batch: IDX files, labels after the first
batch, NaN in evaluation inputs, and the device-side record used off the CPU."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.data import MNISTDataModule
from gmnn.models import DenseMoE
from gmnn.models.checks import BatchGuard
from tests.conftest import tiny_trainer
from tests.data.fake_files import write_idx

COMMON = dict(input_shape=[2], num_classes=3, num_experts=2, expert_hidden=[4], gate_hidden=[4])


def _loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _mnist(root: Path) -> None:
    MNISTDataModule(root=str(root), val_size=8).setup("fit")


def test_idx_file_with_the_wrong_magic_names_the_file(tmp_path: Path) -> None:
    raw = write_idx(tmp_path, train=20, test=12)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(struct.pack(">i", 0x801) + images.read_bytes()[4:])
    with pytest.raises(ValueError, match=rf"^{images}: not an IDX image file: magic number 0x00000801, expected 0x00000803$"):
        _mnist(tmp_path)


def test_truncated_idx_file_names_the_file_and_the_sizes(tmp_path: Path) -> None:
    raw = write_idx(tmp_path, train=20, test=12)
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: 16 + 28 * 28 * 5 + 3])  # 5 images and 3 bytes of the 6th
    expected = 16 + 20 * 28 * 28
    with pytest.raises(ValueError, match=rf"{images}: truncated IDX file: its header promises 20x28x28 bytes of data "
                                         rf"\({expected} bytes in all\) but the file has {16 + 28 * 28 * 5 + 3} bytes"):
        _mnist(tmp_path)
    images.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="shorter than its 16-byte header"):
        _mnist(tmp_path)


def test_label_count_must_equal_image_count(tmp_path: Path) -> None:
    raw = write_idx(tmp_path, train=20, test=12)
    labels = raw / "train-labels-idx1-ubyte"
    labels.write_bytes(struct.pack(">ii", 0x801, 19) + bytes(19))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte holds 20 images but .*train-labels-idx1-ubyte holds 19 labels"):
        _mnist(tmp_path)


@pytest.mark.parametrize("bad_label", [-100, 3])
@pytest.mark.parametrize("stage", ["fit", "validate"])
def test_bad_label_after_the_first_batch_names_the_batch(stage: str, bad_label: int) -> None:
    y = torch.randint(0, 3, (16,))
    y[9] = bad_label  # batch 2 of 4
    good, bad = _loader(torch.randn(16, 2), torch.randint(0, 3, (16,))), _loader(torch.randn(16, 2), y)
    trainer = tiny_trainer(max_epochs=1, num_sanity_val_steps=0)
    name = "train" if stage == "fit" else "val"
    with pytest.raises(ValueError, match=rf"{name} batch 2: labels must lie in \[0, num_classes=3\), got values in "):
        if stage == "fit":
            trainer.fit(DenseMoE(**COMMON), bad, good)
        else:
            trainer.validate(DenseMoE(**COMMON), bad, verbose=False)


def test_nan_in_validation_inputs_stops_with_the_batch() -> None:
    x = torch.randn(16, 2)
    x[13, 1] = float("nan")  # batch 3
    good = _loader(torch.randn(16, 2), torch.randint(0, 3, (16,)))
    bad = _loader(x, torch.randint(0, 3, (16,)))
    with pytest.raises(FloatingPointError, match=r"val batch 3: the loss is NaN or inf; check the val inputs for NaN/inf"):
        tiny_trainer(max_epochs=1, num_sanity_val_steps=0).fit(DenseMoE(**COMMON), good, bad)


def test_batch_guard_reports_the_first_bad_batch_of_any_process() -> None:
    """The record kept off the CPU: nothing is read until check; the earliest bad batch over processes wins."""
    guard = BatchGuard()
    finite, nan = torch.tensor(0.5), torch.tensor(float("nan"))
    no, yes = torch.tensor(False), torch.tensor(True)
    for index, (loss, labels_bad) in enumerate([(finite, no), (finite, no), (nan, no), (finite, yes), (nan, yes)]):
        guard.record(loss, labels_bad, index)
    with pytest.raises(ValueError, match=r"test batch 3: labels must lie in \[0, num_classes=7\)"):
        guard.check("test", 7)
    guard.check("test", 7)  # the record is cleared once reported

    guard.record(finite, no, 0)
    guard.record(nan, None, 4)
    other_process = torch.tensor([1, torch.iinfo(torch.int64).max])  # process 1: NaN loss at its batch 1
    gather = lambda mine: torch.stack([mine, other_process])  # noqa: E731 - stands for LightningModule.all_gather
    with pytest.raises(FloatingPointError, match=r"val batch 1: the loss is NaN or inf"):
        guard.check("val", 7, gather)
