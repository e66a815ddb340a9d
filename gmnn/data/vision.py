"""The shared image DataModule: normalisation, seeded split, imbalanced subsets, loaders."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from gmnn.data.samplers import TensorBatchSampler
from gmnn.data.splits import SplitDataModule
from gmnn.validation import check_non_negative, check_positive_int

DATA_ENV = "GMNN_DATA"


def default_root() -> str:
    """The data folder: ``$GMNN_DATA`` when set, else ``./data``."""
    return os.environ.get(DATA_ENV) or "data"


class BatchIndexedDataset(TensorDataset):
    """A ``TensorDataset`` that reads a whole batch at once: an index tensor or a list of indices (gathered
    with one ``index_select``, several times faster than indexing with the Python list) or a ``slice``
    (a view), as :class:`~gmnn.data.samplers.TensorBatchSampler` and the evaluation shards yield them.
    """

    def __getitem__(self, index: Any) -> tuple[Tensor, ...]:
        if isinstance(index, list):
            index = torch.tensor(index, dtype=torch.long)
        if isinstance(index, Tensor):
            return tuple(tensor.index_select(0, index) for tensor in self.tensors)
        return super().__getitem__(index)


def check_files(folder: Path, names: Sequence[str], dataset: str) -> None:
    """Raise ``FileNotFoundError`` naming ``folder`` and the missing files of ``dataset``."""
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{dataset} files missing in {folder}: expected {', '.join(names)} (missing: {', '.join(missing)}). "
            f"Pass download=True, or point root (or ${DATA_ENV}) at the folder that holds them."
        )


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images ``[N, C, H, W]`` to floats in [0, 1], then ``(x - mean) / std`` per channel."""
    shape = (1, -1, 1, 1)
    mean_, std_ = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    scale, shift = (1 / (255 * std_)).float().view(shape), (-mean_ / std_).float().view(shape)
    return images.float().mul_(scale).add_(shift)  # one affine map in place: no full-size temporaries


def class_subset(labels: Tensor, fractions: Sequence[float], generator: torch.Generator) -> Tensor:
    """Indices keeping ``round(fraction_c * n_c)`` randomly chosen samples of each class c (at least one)."""
    keep = []
    for c, fraction in enumerate(fractions):
        members = (labels == c).nonzero().flatten()
        count = max(1, round(fraction * len(members))) if len(members) else 0
        keep.append(members[torch.randperm(len(members), generator=generator)[:count]])
    return torch.cat(keep).sort().values


def complement(indices: Tensor, n: int) -> Tensor:
    """The indices in ``range(n)`` that are not in ``indices``, in order."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[indices] = False
    return keep.nonzero().flatten()


def check_normalisation(
    mean: Sequence[float] | None, std: Sequence[float] | None, default_mean: Sequence[float], default_std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation's ``(mean, std)``: the given ones (one per channel, std > 0) or the defaults."""
    mean = tuple(default_mean if mean is None else mean)
    std = tuple(default_std if std is None else std)
    if len(mean) != len(default_mean) or len(std) != len(default_std):
        raise ValueError(f"mean and std must give one value per channel ({len(default_mean)}), got {list(mean)}, {list(std)}")
    if not all(s > 0 for s in std):
        raise ValueError(f"std must be > 0 per channel, got {list(std)}")
    return mean, std


class ImageDataModule(SplitDataModule):
    """Base of the image DataModules: subclasses only say how to read the raw arrays.

    The official training set is split once, with ``split_seed``, into training
    and validation parts (``val_size`` samples); the official test set is the
    test split. Images are normalised once into memory and served in whole
    batches (no per-sample Python work).

    Args:
        root: Data folder; default ``$GMNN_DATA`` or ``./data``.
        download: Download missing files with torchvision.
        batch_size: Samples per batch.
        val_size: Samples of the official training set held out for validation.
        split_seed: Seed of the train/validation split and of the imbalanced subset (independent of the run's seed).
        class_fractions: Optional fraction in (0, 1] of each class's training samples to keep
            (one per class): a class-imbalanced training set. Validation and test sets are untouched.
        num_workers: DataLoader worker processes.
        train_size: Keep only this many training images, chosen as the reference implementation does
            (:meth:`subset`: the first ``train_size`` of the official training set); the validation set
            is then drawn (``val_size``, ``split_seed``) from the images left over. ``None``: all of them.
        test_size: Keep only the first ``test_size`` test images (:meth:`subset`); ``None``: all of them.
        mean: Per-channel mean of the normalisation instead of the dataset's (e.g. ``[0.5]``).
        std: Per-channel standard deviation of the normalisation instead of the dataset's (e.g. ``[0.5]``).
    """

    #: Per-channel mean and standard deviation used to normalise.
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    input_shape: list[int] = [1, 28, 28]
    num_classes: int = 10

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        batch_size: int = 512,
        val_size: int = 10000,
        split_seed: int = 0,
        class_fractions: Sequence[float] | None = None,
        num_workers: int = 0,
        train_size: int | None = None,
        test_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        check_non_negative("val_size", val_size)
        check_non_negative("num_workers", num_workers)
        for name, size in (("train_size", train_size), ("test_size", test_size)):
            if size is not None:
                check_positive_int(name, size)
        self.mean, self.std = check_normalisation(mean, std, self.mean, self.std)
        if class_fractions is not None:
            if len(class_fractions) != self.num_classes:
                raise ValueError(
                    f"class_fractions must give one fraction per class ({self.num_classes}), got {len(class_fractions)}"
                )
            if not all(0 < f <= 1 for f in class_fractions):
                raise ValueError(f"class_fractions must lie in (0, 1], got {list(class_fractions)}")
        self.save_hyperparameters()
        self.root = Path(root if root is not None else default_root())
        self.input_shape = list(self.input_shape)
        self.splits: dict[str, TensorDataset] = {}

    # ------------------------------------------------------------ subclasses
    def read(self, train: bool) -> tuple[Tensor, Tensor]:
        """uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` of the official train or test set."""
        raise NotImplementedError

    def download_files(self) -> None:
        """Fetch the raw files into ``root`` (torchvision's downloader)."""
        raise NotImplementedError

    def subset(self, labels: Tensor, size: int) -> Tensor:
        """Indices of the ``size`` samples kept by ``train_size`` / ``test_size``: the first ``size``,
        as the reference's ``Subset(dataset, range(size))``."""
        if size > len(labels):
            raise ValueError(f"train_size / test_size must be at most the {len(labels)} samples, got {size}")
        return torch.arange(size)

    def load(self, train: bool) -> tuple[Tensor, Tensor]:
        """Normalised float images ``[N, C, H, W]`` and int64 labels ``[N]`` of the train or test set."""
        images, labels = self.read(train)
        return normalize(images, self.mean, self.std), labels.long()

    def _unfinished(self, train: bool) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """``(images, labels, finish)``: :meth:`load`'s images are ``finish(images)``, row for row.

        With this class's :meth:`load` the images stay uint8 until ``finish`` normalises them, so the splits are
        gathered from the uint8 set (a quarter of the bytes) and only the kept rows become floats; a subclass
        that defines its own :meth:`load` gets its images and the identity.
        """
        if type(self).load is ImageDataModule.load:
            images, labels = self.read(train)
            return images, labels.long(), lambda rows: normalize(rows, self.mean, self.std)
        images, labels = self.load(train)
        return images, labels, lambda rows: rows

    # -------------------------------------------------------------- lightning
    def prepare_data(self) -> None:
        if self.hparams.download:
            self.download_files()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        images, labels, finish = self._unfinished(train=True)
        generator = torch.Generator().manual_seed(hp.split_seed)
        train_size = hp.get("train_size")
        kept = None if train_size is None else self.subset(labels, train_size)
        pool = torch.arange(len(labels)) if kept is None else complement(kept, len(labels))
        if kept is None and hp.val_size >= len(pool):
            raise ValueError(f"val_size must be smaller than the {len(pool)} training samples, got {hp.val_size}")
        if kept is not None and hp.val_size > len(pool):
            raise ValueError(f"val_size must be at most the {len(pool)} samples left over by train_size={train_size}, got {hp.val_size}")
        order = pool[torch.randperm(len(pool), generator=generator)]
        val_idx, train_idx = order[: hp.val_size], (order[hp.val_size :] if kept is None else kept)
        if hp.class_fractions is not None:
            train_idx = train_idx[class_subset(labels[train_idx], hp.class_fractions, generator)]
        test_images, test_labels, finish_test = self._unfinished(train=False)
        if hp.get("test_size") is not None:
            test_idx = self.subset(test_labels, hp.test_size)
            test_images, test_labels = test_images[test_idx], test_labels[test_idx]
        self.splits = {
            # index_select copies whole rows, several times faster than indexing with the index tensor
            "train": BatchIndexedDataset(finish(images.index_select(0, train_idx)), labels[train_idx]),
            "val": BatchIndexedDataset(finish(images.index_select(0, val_idx)), labels[val_idx]),
            "test": BatchIndexedDataset(finish_test(test_images), test_labels),
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        # Whole batches are indexed at once (BatchIndexedDataset): no per-sample collate.
        sampler = None if shuffle else self.eval_sampler(dataset, self.hparams.batch_size)
        sampler = sampler or TensorBatchSampler(len(dataset), self.hparams.batch_size, shuffle)
        workers = self.hparams.num_workers
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
