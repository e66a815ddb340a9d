"""Shared fixtures. Tests use tiny generated data only."""

from __future__ import annotations

import pytorch_lightning as L
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


def tiny_trainer(**kwargs: object) -> L.Trainer:
    """A quiet CPU trainer for tests."""
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


# Small ops: one intra-op thread is as fast, and avoids oversubscribing CI's 2 cores.
torch.set_num_threads(1)
