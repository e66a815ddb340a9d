"""CIFAR-10 and CIFAR-100 from the python pickled batches torchvision downloads."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gmnn.data.vision import ImageDataModule, check_files


def read_batches(folder: Path, names: list[str], label_key: str) -> tuple[Tensor, Tensor]:
    """Concatenate pickled CIFAR batches: uint8 images ``[N, 3, 32, 32]``, labels ``[N]``."""
    images, labels = [], []
    for name in names:
        with open(folder / name, "rb") as file:
            entry = pickle.load(file, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10, 3x32x32 colour images, 10 classes (Krizhevsky, 2009).

    Reads torchvision's ``root/cifar-10-batches-py`` (``data_batch_1`` ...
    ``data_batch_5``, ``test_batch``); ``download=True`` fetches them with
    torchvision. Normalised per channel with the training set's mean
    (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616). Training set:
    the 50k training images less ``val_size`` (default 10k) for validation.
    """

    #: The torchvision dataset (``torchvision.datasets.<name>``) that downloads the files.
    dataset_name = "CIFAR10"
    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]
    label_key = "labels"
    input_shape = [3, 32, 32]
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def download_files(self) -> None:
        from torchvision import datasets

        getattr(datasets, self.dataset_name)(str(self.root), train=True, download=True)

    def read(self, train: bool) -> tuple[Tensor, Tensor]:
        folder = self.root / self.folder
        check_files(folder, self.train_files + self.test_files, self.dataset_name)
        return read_batches(folder, self.train_files if train else self.test_files, self.label_key)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100, 3x32x32 colour images, 100 fine classes (Krizhevsky, 2009).

    Reads torchvision's ``root/cifar-100-python`` (``train``, ``test``);
    normalised with mean (0.5071, 0.4865, 0.4409) and std (0.2673, 0.2564, 0.2762).
    Split as :class:`CIFAR10DataModule`.
    """

    dataset_name = "CIFAR100"
    folder = "cifar-100-python"
    train_files = ["train"]
    test_files = ["test"]
    label_key = "fine_labels"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
