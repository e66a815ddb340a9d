"""Tiny datasets written in torchvision's on-disk formats (IDX files, pickled CIFAR batches).

Image ``i`` of a split is filled with the pixel value ``i`` (so samples can be
told apart after normalisation) and labelled ``i % num_classes``.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def fake_images(n: int, shape: tuple[int, ...], start: int = 0) -> np.ndarray:
    """``n`` uint8 images of ``shape``; image ``i`` is filled with ``start + i``."""
    values = np.arange(start, start + n, dtype=np.uint8).reshape(-1, *[1] * len(shape))
    return np.broadcast_to(values, (n, *shape)).copy()


def write_idx(root: Path, name: str = "MNIST", train: int = 40, test: int = 12) -> Path:
    """Write MNIST-format IDX files to ``root/name/raw``; return that folder."""
    folder = root / name / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for is_train, n in ((True, train), (False, test)):
        image_file, label_file = MNIST_FILES[is_train]
        images = fake_images(n, (28, 28))
        (folder / image_file).write_bytes(struct.pack(">iiii", 0x803, n, 28, 28) + images.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / label_file).write_bytes(struct.pack(">ii", 0x801, n) + labels.tobytes())
    return folder


def _cifar_entry(n: int, num_classes: int, label_key: str, start: int = 0) -> dict:
    images = fake_images(n, (3, 32, 32), start)
    images[:, 1] //= 2  # green plane differs from red and blue: catches a channel-order mix-up
    return {"data": images.reshape(n, -1), label_key: [(start + i) % num_classes for i in range(n)]}


def write_cifar10(root: Path, per_batch: int = 8, test: int = 12) -> Path:
    """Write ``cifar-10-batches-py`` with five training batches of ``per_batch`` images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        entry = _cifar_entry(per_batch, 10, "labels", start=(i - 1) * per_batch)
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_entry(test, 10, "labels")))
    return folder


def write_cifar100(root: Path, train: int = 40, test: int = 12) -> Path:
    """Write ``cifar-100-python`` with ``train`` and ``test`` files (fine labels)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train").write_bytes(pickle.dumps(_cifar_entry(train, 100, "fine_labels")))
    (folder / "test").write_bytes(pickle.dumps(_cifar_entry(test, 100, "fine_labels")))
    return folder
