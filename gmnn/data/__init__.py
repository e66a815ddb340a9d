"""LightningDataModules. They stand alone: nothing here imports the models."""

from gmnn.data.toy import PROBLEMS, ToyDataModule

__all__ = ["PROBLEMS", "ToyDataModule"]
