"""Samplers of whole batches: shuffled or in order on one process, unpadded evaluation shards on several."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch import Tensor
from torch.utils.data import Sampler

from gmnn.pl import UnrepeatedDistributedSampler


class TensorBatchSampler(Sampler):
    """Batches of ``batch_size`` of the indices ``0 .. size - 1``, as one object each, for a dataset that
    reads a whole batch at once (:class:`~gmnn.data.vision.BatchIndexedDataset`).

    Shuffled: the batches of ``BatchSampler(RandomSampler(dataset), batch_size, drop_last=False)`` (the
    same permutation, drawn from the same global random state), as ``int64`` tensors instead of lists
    of Python ints; in order: ``slice`` objects, so a batch is a view of the rows, not a copy.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool) -> None:
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle

    def __iter__(self) -> Iterator[Tensor | slice]:  # a generator: the seed is drawn at the first batch, as RandomSampler's
        if not self.shuffle:
            for start in range(0, self.size, self.batch_size):
                yield slice(start, min(start + self.batch_size, self.size))
            return
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # as RandomSampler without a generator
        yield from torch.randperm(self.size, generator=torch.Generator().manual_seed(seed)).split(self.batch_size)

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)


class EvalShardSampler(UnrepeatedDistributedSampler):
    """Process ``rank``'s strided shard of an evaluation set, without the padding of ``DistributedSampler``.

    PyTorch's ``DistributedSampler`` evens out the processes by repeating
    samples, so validation and test metrics under DDP would count those samples
    twice. Here the shards differ by at most one sample, and every sample is
    seen exactly once, so the summed metric states equal one process's. Being a
    ``DistributedSampler``, Lightning leaves it in place.

    Args:
        dataset: The evaluation set (sized).
        num_replicas: Number of processes.
        rank: This process's rank.
        batch_size: ``None`` yields sample indices (for a ``DataLoader`` with a
            ``batch_size``); an integer yields lists of that many indices (for
            ``DataLoader(batch_size=None)`` over a dataset indexed by lists).

    Raises:
        ValueError: The set has fewer samples than there are processes (a process
            without a batch would leave the others waiting in the metrics' sync).
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, batch_size: int | None = None) -> None:
        if len(dataset) < num_replicas:
            raise ValueError(
                f"the evaluation set has {len(dataset)} samples, fewer than the {num_replicas} processes: "
                "every process needs at least one sample (enlarge the split or use fewer devices)"
            )
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator:  # type: ignore[override]
        indices = list(super().__iter__())
        if self.batch_size is None:
            return iter(indices)
        return (indices[start : start + self.batch_size] for start in range(0, len(indices), self.batch_size))

    def __len__(self) -> int:
        if self.batch_size is None:
            return self.num_samples
        return -(-self.num_samples // self.batch_size)
