"""The reference's data setups on tiny fake IDX files: first-N subsets, 0.5/0.5 normalisation, the 12-class task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmnn.data import FashionMNISTMNISTDataModule, MNISTDataModule
from tests.data.fake_files import write_idx
from tests.data.test_vision import pixel_ids


def test_mnist_first_n_subsets_and_normalisation_override(tmp_path: Path) -> None:
    write_idx(tmp_path, train=40, test=12)
    dm = MNISTDataModule(root=str(tmp_path), train_size=10, test_size=4, val_size=5, mean=[0.5], std=[0.5])
    dm.setup()
    train_x, train_y = dm.splits["train"].tensors
    assert pixel_ids(train_x, 0.5, 0.5).tolist() == list(range(10))  # Subset(trainset, range(10))
    assert torch.equal(train_y, torch.arange(10) % 10)
    val_ids = pixel_ids(dm.splits["val"].tensors[0], 0.5, 0.5)
    assert len(val_ids) == 5 and val_ids.min() >= 10  # drawn from the images left over
    test_x, test_y = dm.splits["test"].tensors
    assert len(test_y) == 4
    torch.testing.assert_close(test_x[3], torch.full((1, 28, 28), (3 / 255 - 0.5) / 0.5))  # (x - 0.5) / 0.5


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(train_size=0), "train_size must be"), (dict(std=[0.0]), "std must be > 0"),
    (dict(mean=[0.5, 0.5]), "one value per channel"),
])
def test_bad_subset_or_normalisation_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MNISTDataModule(**kwargs)


def test_val_size_must_fit_in_what_train_size_leaves(tmp_path: Path) -> None:
    write_idx(tmp_path, train=40, test=12)
    with pytest.raises(ValueError, match="at most the 30 samples left over by train_size=10"):
        MNISTDataModule(root=str(tmp_path), train_size=10, val_size=31).setup()


def test_the_12_class_task_relabels_and_subsets_as_the_reference(tmp_path: Path) -> None:
    write_idx(tmp_path, "FashionMNIST", train=40, test=12)  # image i has label i % 10
    write_idx(tmp_path, "MNIST", train=40, test=12)
    dm = FashionMNISTMNISTDataModule(root=str(tmp_path), task="fashion_0-5_mnist_4-9", train_size=20, test_size=12,
                                     val_size=6, mean=[0.5], std=[0.5])
    dm.setup()
    assert dm.num_classes == 12
    train_x, train_y = dm.splits["train"].tensors
    # filter_classes: 10 per dataset, the first ceil(10 / 6) = 2 of each class in class order, cut to 10
    assert pixel_ids(train_x, 0.5, 0.5).tolist() == [0, 10, 1, 11, 2, 12, 3, 13, 4, 14] + [4, 14, 5, 15, 6, 16, 7, 17, 8, 18]
    assert train_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] + [6, 6, 7, 7, 8, 8, 9, 9, 10, 10]  # MNIST d -> d + 2
    test_x, test_y = dm.splits["test"].tensors
    assert pixel_ids(test_x, 0.5, 0.5).tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9]
    assert test_y.tolist() == list(range(12))
    # validation: 6 of the kept classes' images that training did not take
    val_x, val_y = dm.splits["val"].tensors
    taken = set(zip(pixel_ids(train_x, 0.5, 0.5).tolist(), (train_y >= 6).tolist()))
    assert len(val_y) == 6 and not taken & set(zip(pixel_ids(val_x, 0.5, 0.5).tolist(), (val_y >= 6).tolist()))
    fashion = val_y < 6
    assert torch.equal(val_y[fashion], pixel_ids(val_x, 0.5, 0.5)[fashion] % 10)
    assert torch.equal(val_y[~fashion], pixel_ids(val_x, 0.5, 0.5)[~fashion] % 10 + 2)


def test_the_12_class_task_without_subsets_keeps_every_sample_of_its_classes(tmp_path: Path) -> None:
    write_idx(tmp_path, "FashionMNIST", train=20, test=12)
    write_idx(tmp_path, "MNIST", train=20, test=12)
    dm = FashionMNISTMNISTDataModule(root=str(tmp_path), task="fashion_0-5_mnist_4-9", val_size=4)
    dm.setup()
    # FashionMNIST: images 0-5 and 10-15 (classes 0-5); MNIST: 4-9 and 14-19 (digits 4-9): 24 in all
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 24
    test_y = dm.splits["test"].tensors[1]
    assert test_y.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 6, 7, 8, 9, 10, 11]
    # each part keeps its own normalisation when none is given
    test_x = dm.splits["test"].tensors[0]
    assert test_x[5, 0, 0, 0].item() == pytest.approx((5 / 255 - 0.2860) / 0.3530, abs=1e-6)
    assert test_x[8, 0, 0, 0].item() == pytest.approx((4 / 255 - 0.1307) / 0.3081, abs=1e-6)
    with pytest.raises(ValueError, match="task must be one of"):
        FashionMNISTMNISTDataModule(task="fashion_mnist")
