"""Image DataModules on tiny files written in torchvision's formats (never the real datasets)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmnn.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    FashionMNISTMNISTDataModule,
    MNISTDataModule,
)
from gmnn.data.vision import default_root
from tests.data.fake_files import write_cifar10, write_cifar100, write_idx


def pixel_ids(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Undo the normalisation of channel 0 and read back each image's fill value (its id)."""
    return (images[:, 0] * std + mean).mul(255).round().long().flatten(1)[:, 0]


def test_mnist_shapes_labels_splits_and_normalisation(tmp_path: Path) -> None:
    write_idx(tmp_path, train=40, test=12)
    dm = MNISTDataModule(root=str(tmp_path), batch_size=16, val_size=10)
    dm.setup("fit")
    assert dm.input_shape == [1, 28, 28] and dm.num_classes == 10
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 30, "val": 10, "test": 12}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert [len(b[1]) for b in dm.train_dataloader()] == [16, 14]
    # normalisation: image 3 is filled with pixel value 3 -> (3/255 - 0.1307) / 0.3081 everywhere
    test_x, test_y = dm.splits["test"].tensors
    torch.testing.assert_close(test_x[3], torch.full((1, 28, 28), (3 / 255 - 0.1307) / 0.3081))
    assert torch.equal(test_y, torch.arange(12) % 10)
    # the split is a partition of the 40 training images, labels kept with their images
    train_x, train_y = dm.splits["train"].tensors
    val_x, val_y = dm.splits["val"].tensors
    ids = torch.cat([pixel_ids(train_x, 0.1307, 0.3081), pixel_ids(val_x, 0.1307, 0.3081)])
    assert sorted(ids.tolist()) == list(range(40))
    assert torch.equal(torch.cat([train_y, val_y]), ids % 10)


def test_split_is_fixed_by_split_seed_not_by_the_global_seed(tmp_path: Path) -> None:
    write_idx(tmp_path, train=40, test=12)

    def val_ids(split_seed: int) -> list[int]:
        dm = MNISTDataModule(root=str(tmp_path), val_size=10, split_seed=split_seed)
        dm.setup()
        return pixel_ids(dm.splits["val"].tensors[0], 0.1307, 0.3081).tolist()

    first = val_ids(0)
    torch.manual_seed(123)
    assert val_ids(0) == first
    assert val_ids(1) != first


def test_fashion_mnist_reads_its_own_folder_and_statistics(tmp_path: Path) -> None:
    write_idx(tmp_path, "FashionMNIST", train=20, test=12)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=5)
    dm.setup()
    torch.testing.assert_close(dm.splits["test"].tensors[0][7], torch.full((1, 28, 28), (7 / 255 - 0.2860) / 0.3530))
    assert len(dm.splits["train"]) == 15


def test_combined_fashion_mnist_and_mnist_have_disjoint_labels(tmp_path: Path) -> None:
    write_idx(tmp_path, "FashionMNIST", train=20, test=12)
    write_idx(tmp_path, "MNIST", train=30, test=12)
    dm = FashionMNISTMNISTDataModule(root=str(tmp_path), val_size=10)
    dm.setup()
    assert dm.num_classes == 20 and {k: len(v) for k, v in dm.splits.items()} == {"train": 40, "val": 10, "test": 24}
    test_x, test_y = dm.splits["test"].tensors
    assert torch.equal(test_y, torch.cat([torch.arange(12) % 10, torch.arange(12) % 10 + 10]))
    # each part keeps its own normalisation: test image 5 of FashionMNIST, then of MNIST
    assert test_x[5, 0, 0, 0].item() == pytest.approx((5 / 255 - 0.2860) / 0.3530, abs=1e-6)
    assert test_x[12 + 5, 0, 0, 0].item() == pytest.approx((5 / 255 - 0.1307) / 0.3081, abs=1e-6)
    train_labels = torch.cat([dm.splits["train"].tensors[1], dm.splits["val"].tensors[1]])
    assert (train_labels < 10).sum() == 20 and (train_labels >= 10).sum() == 30 and train_labels.max() == 19


def test_cifar10_reads_pickled_batches_channel_first(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=8, test=12)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=10, batch_size=4)
    dm.setup()
    assert dm.input_shape == [3, 32, 32]
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 30, "val": 10, "test": 12}
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 32, 32) and torch.equal(y, torch.arange(4))
    mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
    raw = torch.tensor([6.0, 3.0, 6.0]) / 255  # image 6: red 6, green 6 // 2, blue 6
    expected = ((raw - mean) / std).view(3, 1, 1).expand(3, 32, 32)
    torch.testing.assert_close(dm.splits["test"].tensors[0][6], expected)
    ids = torch.cat([pixel_ids(dm.splits[s].tensors[0], dm.mean[0], dm.std[0]) for s in ("train", "val")])
    assert sorted(ids.tolist()) == list(range(40))


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path, train=150, test=12)
    dm = CIFAR100DataModule(root=str(tmp_path), val_size=20)
    dm.setup()
    assert dm.num_classes == 100 and len(dm.splits["train"]) == 130
    labels = torch.cat([dm.splits["train"].tensors[1], dm.splits["val"].tensors[1]])
    assert labels.min() == 0 and labels.max() == 99


def test_class_imbalanced_training_subset(tmp_path: Path) -> None:
    write_idx(tmp_path, train=200, test=12)  # labels i % 10: 20 training images per class
    fractions = [1.0, 0.5, 0.33, 0.1, 1.0, 0.01, 1.0, 1.0, 0.77, 0.05]
    dm = MNISTDataModule(root=str(tmp_path), val_size=0, class_fractions=fractions)
    dm.setup()
    # 20 x fraction, to the nearest integer, at least one: 6.6 -> 7, 0.2 -> 1, 15.4 -> 15, 1.0 -> 1
    expected = [20, 10, 7, 2, 20, 1, 20, 20, 15, 1]
    assert torch.bincount(dm.splits["train"].tensors[1], minlength=10).tolist() == expected
    ids = pixel_ids(dm.splits["train"].tensors[0], dm.mean[0], dm.std[0])
    assert torch.equal(ids % 10, dm.splits["train"].tensors[1]) and len(set(ids.tolist())) == sum(expected)
    full = MNISTDataModule(root=str(tmp_path), val_size=50)
    subset = MNISTDataModule(root=str(tmp_path), val_size=50, class_fractions=fractions)
    full.setup()
    subset.setup()
    assert torch.equal(subset.splits["val"].tensors[1], full.splits["val"].tensors[1])  # validation untouched
    assert len(subset.splits["train"]) < len(full.splits["train"]) == 150


@pytest.mark.parametrize(
    ("module", "folder", "files"),
    [
        (MNISTDataModule, "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        (FashionMNISTDataModule, "FashionMNIST/raw", ["train-images-idx3-ubyte"]),
        (FashionMNISTMNISTDataModule, "FashionMNIST/raw", ["train-labels-idx1-ubyte"]),
        (CIFAR10DataModule, "cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch"]),
        (CIFAR100DataModule, "cifar-100-python", ["train", "test"]),
    ],
)
def test_missing_files_error_names_the_folder_and_files(tmp_path: Path, module: type, folder: str, files: list[str]) -> None:
    with pytest.raises(FileNotFoundError) as info:
        module(root=str(tmp_path)).setup()
    message = str(info.value)
    assert str(tmp_path / folder) in message and "download=True" in message
    assert all(name in message for name in files)


def test_root_defaults_to_gmnn_data_then_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GMNN_DATA", "/somewhere/datasets")
    assert default_root() == "/somewhere/datasets"
    assert MNISTDataModule().root == Path("/somewhere/datasets")
    monkeypatch.delenv("GMNN_DATA")
    assert MNISTDataModule().root == Path("data")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_size": -1}, "val_size"),
        ({"class_fractions": [0.5] * 9}, "class_fractions must give one fraction per class"),
        ({"class_fractions": [0.0] + [1.0] * 9}, r"class_fractions must lie in \(0, 1\]"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MNISTDataModule(**kwargs)


def test_val_size_larger_than_the_training_set(tmp_path: Path) -> None:
    write_idx(tmp_path, train=20, test=12)
    with pytest.raises(ValueError, match="val_size must be smaller than the 20"):
        MNISTDataModule(root=str(tmp_path), val_size=20).setup()


def test_a_batch_is_gathered_at_once_with_its_labels_and_an_epoch_sees_every_sample_once(tmp_path: Path) -> None:
    """The loader hands the BatchSampler's whole index list to the dataset (one gather per tensor)."""
    write_idx(tmp_path, train=40, test=12)
    dm = MNISTDataModule(root=str(tmp_path), batch_size=16, val_size=10)
    dm.setup("fit")
    dataset = dm.splits["train"]
    images, labels = dataset.tensors
    seen = []
    for x, y in dm.train_dataloader():
        rows = (x.flatten(1)[:, None] == images.flatten(1)[None]).all(-1).float().argmax(1)  # every image is unique
        assert torch.equal(images[rows], x) and torch.equal(labels[rows], y)
        seen += rows.tolist()
    assert sorted(seen) == list(range(30)) and seen != list(range(30))  # each once, shuffled
    x, y = dataset[[4, 2, 4]]
    assert torch.equal(x, images[[4, 2, 4]]) and torch.equal(y, labels[[4, 2, 4]])
    single = dataset[5]  # one index still reads one sample, as a TensorDataset does
    assert torch.equal(single[0], images[5]) and int(single[1]) == int(labels[5])
    with pytest.raises(IndexError):
        dataset[[0, 30]]  # 30 is past the 30 training samples
