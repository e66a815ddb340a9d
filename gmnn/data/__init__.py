"""LightningDataModules. They stand alone: nothing here imports the models."""

from gmnn.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from gmnn.data.mnist import (
    FashionMNISTDataModule,
    FashionMNISTMNISTDataModule,
    MNISTDataModule,
)
from gmnn.data.regression import REGRESSION_PROBLEMS, ToyRegressionDataModule
from gmnn.data.text import BYTE_CLASSES, MixedSourceTextDataModule, byte_classes
from gmnn.data.toy import PROBLEMS, ToyDataModule
from gmnn.data.vision import ImageDataModule

__all__ = [
    "BYTE_CLASSES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "FashionMNISTMNISTDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "MixedSourceTextDataModule",
    "PROBLEMS",
    "REGRESSION_PROBLEMS",
    "ToyDataModule",
    "ToyRegressionDataModule",
    "byte_classes",
]
