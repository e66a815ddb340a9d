"""The per-epoch values a training epoch logs equal the same means computed independently."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.models import DenseMoE
from tests.conftest import tiny_trainer


def test_train_gate_prob_is_the_sample_mean_over_the_epoch_and_train_acc_the_epoch_accuracy() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(10, 2), torch.randint(0, 3, (10,))
    # lr 1e-12: the weights stay those of the copy below, so the epoch's gate probabilities are known
    model = DenseMoE(input_shape=[2], num_classes=3, num_experts=3, expert_hidden=[4], gate_hidden=[4], lr=1e-12)
    frozen = copy.deepcopy(model).eval()
    trainer = tiny_trainer(max_epochs=1)
    # batches of 6 and 4 samples: a mean of the two batch means would differ from the sample mean
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=6))
    with torch.no_grad():
        out = frozen(x)
    expected = out.gate_probs.double().mean(0)
    logged = torch.tensor([float(trainer.logged_metrics[f"train/gate_prob/expert_{i}"]) for i in range(3)])
    torch.testing.assert_close(logged, expected.float(), atol=1e-6, rtol=0)
    accuracy = (out.log_probs.argmax(-1) == y).double().mean().item()
    assert float(trainer.logged_metrics["train/acc"]) == pytest.approx(accuracy, abs=1e-7)
