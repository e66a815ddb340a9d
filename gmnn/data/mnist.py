"""MNIST, FashionMNIST and the combined FashionMNIST+MNIST task (torchvision's IDX files)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gmnn.data.idx import check_idx_pair, read_idx
from gmnn.data.vision import ImageDataModule, check_files
from gmnn.validation import check_choice

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class _IDXDataModule(ImageDataModule):
    """An MNIST-format dataset in ``root/<name>/raw``, laid out and downloaded by torchvision's dataset ``<name>``.

    The IDX files are read here (:func:`~gmnn.data.idx.read_idx`); torchvision is imported only to download.
    """

    #: The torchvision dataset (``torchvision.datasets.<name>``) and the folder its files are in.
    dataset_name = "MNIST"

    def download_files(self) -> None:
        from torchvision import datasets

        for train in (True, False):
            getattr(datasets, self.dataset_name)(str(self.root), train=train, download=True)

    def read(self, train: bool) -> tuple[Tensor, Tensor]:
        raw = self.root / self.dataset_name / "raw"
        check_files(raw, IDX_FILES, self.dataset_name)
        images, labels = IDX_FILES[:2] if train else IDX_FILES[2:]
        check_idx_pair(raw / images, raw / labels)
        return read_idx(raw / images).unsqueeze(1), read_idx(raw / labels).long()


class MNISTDataModule(_IDXDataModule):
    """MNIST digits, 1x28x28, 10 classes (LeCun et al., 1998).

    Reads ``root/MNIST/raw/*-idx?-ubyte`` as torchvision lays them out and
    normalises with the paper's mean 0.1307 and std 0.3081 (Krishnamurthy et
    al., 2023). Training set: 50k of the 60k official training images, the
    other 10k for validation (seeded split); test set: the official 10k.
    All arguments are those of :class:`~gmnn.data.vision.ImageDataModule`.
    """

    dataset_name = "MNIST"
    mean = (0.1307,)
    std = (0.3081,)


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST clothing images, 1x28x28, 10 classes (Xiao et al., 2017).

    Reads ``root/FashionMNIST/raw/*-idx?-ubyte``; normalised with the training
    set's mean 0.2860 and std 0.3530. Split as :class:`MNISTDataModule`.
    """

    dataset_name = "FashionMNIST"
    mean = (0.2860,)
    std = (0.3530,)


# task -> the classes kept of (FashionMNIST, MNIST), in that order; labels are numbered on in that order
TASKS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "all_20": (tuple(range(10)), tuple(range(10))),
    "fashion_0-5_mnist_4-9": (tuple(range(6)), tuple(range(4, 10))),
}


class FashionMNISTMNISTDataModule(ImageDataModule):
    """FashionMNIST and MNIST together, 1x28x28: classes of both datasets, disjoint labels.

    ``task="all_20"`` (default): labels 0-9 are FashionMNIST's classes and
    10-19 MNIST's digits, where a good gate separates the two datasets.
    ``task="fashion_0-5_mnist_4-9"``: the first paper's 12-class task
    (``xai_neurips_2021/notebooks/fmnist_mnist_classification.ipynb`` of
    ``yamsgithub/modular_deep_learning``, with 6 experts): FashionMNIST
    classes 0-5 keep their labels and MNIST digits 4-9 become labels 6-11.
    Each part is normalised with its own statistics unless ``mean``/``std``
    are given (the reference: 0.5/0.5 for both); the validation split takes
    ``val_size`` samples from the union of both training sets. ``train_size``
    and ``test_size`` keep the reference's subset (its ``filter_classes``):
    half from each dataset, the first ``ceil(half / classes)`` samples of each
    kept class in class order, cut to the half.

    Args:
        task: ``"all_20"`` or ``"fashion_0-5_mnist_4-9"``.
        **kwargs: The arguments of :class:`~gmnn.data.vision.ImageDataModule`.
    """

    parts = (FashionMNISTDataModule, MNISTDataModule)

    def __init__(self, task: str = "all_20", **kwargs: Any) -> None:
        check_choice("task", task, tuple(TASKS))
        self.kept = TASKS[task]
        self.num_classes = sum(len(classes) for classes in self.kept)
        super().__init__(**kwargs)

    def _parts(self) -> list[_IDXDataModule]:
        hp = self.hparams
        return [part(root=str(self.root), download=hp.download, mean=hp.get("mean"), std=hp.get("std")) for part in self.parts]

    def download_files(self) -> None:
        for part in self._parts():
            part.download_files()

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        images, labels, offset = [], [], 0
        for part, classes in zip(self._parts(), self.kept):
            x, y = part.load(train)
            keep = torch.isin(y, torch.tensor(classes))
            remap = torch.full((10,), -1, dtype=torch.long)
            remap[list(classes)] = torch.arange(offset, offset + len(classes))
            images.append(x[keep])
            labels.append(remap[y[keep]])
            offset += len(classes)
        return torch.cat(images), torch.cat(labels)

    def subset(self, labels: Tensor, size: int) -> Tensor:
        """The reference's ``filter_classes`` per dataset: ``size // 2`` from each, the first
        ``ceil((size // 2) / classes)`` of every class in class order, cut to ``size // 2``."""
        half, chosen, offset = size // 2, [], 0
        for classes in self.kept:
            per_class = math.ceil(half / len(classes))
            part = [(labels == c).nonzero().flatten()[:per_class] for c in range(offset, offset + len(classes))]
            chosen.append(torch.cat(part)[:half])
            offset += len(classes)
            if len(chosen[-1]) < half:
                raise ValueError(f"train_size / test_size={size} needs {half} samples of each dataset, got {len(chosen[-1])}")
        return torch.cat(chosen)
