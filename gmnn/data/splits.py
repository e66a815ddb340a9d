"""The loader hooks shared by every gmnn DataModule: one loader per named split."""

from __future__ import annotations

from collections.abc import Sized

from torch.utils.data import DataLoader

from gmnn.data.samplers import EvalShardSampler
from gmnn.pl import LightningDataModule


class SplitDataModule(LightningDataModule):
    """A DataModule whose ``setup`` fills ``self.splits`` (``train``, ``val``, ``test``).

    Subclasses define :meth:`_loader`; training batches are shuffled, the
    others are not, and ``predict`` reads the test split. Under several
    processes the evaluation loaders read an :class:`EvalShardSampler` each
    (every sample once, no padded duplicates), so metrics equal one process's.
    """

    def eval_sampler(self, dataset: Sized, batch_size: int | None = None) -> EvalShardSampler | None:
        """This process's unpadded shard of an evaluation ``dataset``, or ``None`` in a single process."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size <= 1:
            return None
        return EvalShardSampler(dataset, trainer.world_size, trainer.global_rank, batch_size)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
