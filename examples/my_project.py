"""A stand-in for your own project: a data module and an expert network (used by examples/02_own_data_and_expert.py).

The ``gmnn`` command finds them by class path (``my_project.RingsData``) when this folder is on ``PYTHONPATH``.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class RingsData(pl.LightningDataModule):
    """Points on three concentric rings, each ring cut into two classes by the sign of y: 6 classes in all.

    Args:
        num_samples: Points in all (80% training, 20% validation).
        batch_size: Batch size.
        seed: Seed of the points.
    """

    def __init__(self, num_samples: int = 3000, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.input_shape, self.num_classes = [2], 6  # the gmnn command links both into the model

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        ring = torch.randint(0, 3, (self.num_samples,), generator=generator)
        angle = torch.rand(self.num_samples, generator=generator) * 2 * math.pi
        radius = 1.0 + ring + 0.15 * torch.randn(self.num_samples, generator=generator)
        x = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
        y = 2 * ring + (x[:, 1] > 0).long()
        cut = int(0.8 * self.num_samples)
        self.train_set, self.val_set = TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class RadialExpert(nn.Module):
    """An expert that sees the radius and angle of its input as well as the input.

    Args:
        in_features: Flattened input size (passed by gmnn).
        out_features: Classes (passed by gmnn).
        width: Hidden width.
    """

    def __init__(self, in_features: int, out_features: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features + 2, width), nn.Tanh())
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        polar = torch.stack([x.norm(dim=1), torch.atan2(x[:, 1], x[:, 0])], dim=1)
        return self.head(self.body(torch.cat([x, polar], dim=1)))
