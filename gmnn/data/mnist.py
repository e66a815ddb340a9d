"""MNIST, FashionMNIST and the combined FashionMNIST+MNIST task (torchvision's IDX files)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision import datasets

from gmnn.data.idx import check_idx_pair
from gmnn.data.vision import ImageDataModule, check_files

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class _IDXDataModule(ImageDataModule):
    """An MNIST-format dataset read with torchvision from ``root/<name>/raw``."""

    dataset_class: type[datasets.MNIST] = datasets.MNIST

    def download_files(self) -> None:
        for train in (True, False):
            self.dataset_class(str(self.root), train=train, download=True)

    def read(self, train: bool) -> tuple[Tensor, Tensor]:
        raw = self.root / self.dataset_class.__name__ / "raw"
        check_files(raw, IDX_FILES, self.dataset_class.__name__)
        images, labels = IDX_FILES[:2] if train else IDX_FILES[2:]
        check_idx_pair(raw / images, raw / labels)
        dataset = self.dataset_class(str(self.root), train=train, download=False)
        return dataset.data.unsqueeze(1), dataset.targets.long()


class MNISTDataModule(_IDXDataModule):
    """MNIST digits, 1x28x28, 10 classes (LeCun et al., 1998).

    Reads ``root/MNIST/raw/*-idx?-ubyte`` as torchvision lays them out and
    normalises with the paper's mean 0.1307 and std 0.3081 (Krishnamurthy et
    al., 2023). Training set: 50k of the 60k official training images, the
    other 10k for validation (seeded split); test set: the official 10k.
    All arguments are those of :class:`~gmnn.data.vision.ImageDataModule`.
    """

    dataset_class = datasets.MNIST
    mean = (0.1307,)
    std = (0.3081,)


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST clothing images, 1x28x28, 10 classes (Xiao et al., 2017).

    Reads ``root/FashionMNIST/raw/*-idx?-ubyte``; normalised with the training
    set's mean 0.2860 and std 0.3530. Split as :class:`MNISTDataModule`.
    """

    dataset_class = datasets.FashionMNIST
    mean = (0.2860,)
    std = (0.3530,)


class FashionMNISTMNISTDataModule(ImageDataModule):
    """FashionMNIST and MNIST together: 20 disjoint classes, 1x28x28.

    Labels 0-9 are FashionMNIST's classes and 10-19 MNIST's digits (the
    paper's combined task, where a good gate separates the two datasets).
    Each part is normalised with its own statistics; the validation split
    takes ``val_size`` samples from the union of both training sets.
    """

    num_classes = 20
    parts = (FashionMNISTDataModule, MNISTDataModule)

    def _parts(self) -> list[_IDXDataModule]:
        hp = self.hparams
        return [part(root=str(self.root), download=hp.download) for part in self.parts]

    def download_files(self) -> None:
        for part in self._parts():
            part.download_files()

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for offset, part in enumerate(self._parts()):
            x, y = part.load(train)
            images.append(x)
            labels.append(y + 10 * offset)
        return torch.cat(images), torch.cat(labels)
