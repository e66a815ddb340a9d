"""The loader hooks shared by every gmnn DataModule: one loader per named split."""

from __future__ import annotations

from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader


class SplitDataModule(LightningDataModule):
    """A DataModule whose ``setup`` fills ``self.splits`` (``train``, ``val``, ``test``).

    Subclasses define :meth:`_loader`; training batches are shuffled, the
    others are not, and ``predict`` reads the test split.
    """

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
