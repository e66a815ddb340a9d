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


def test_validation_logs_sample_means_and_the_epoch_metrics_once_an_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """val/gate_prob is the sample mean over unequal batches, val/acc and val/mutual_information those of the
    whole set; per batch only the loss goes through ``self.log`` (each call costs ~0.2 ms)."""
    from gmnn.metrics import mutual_information_bits

    torch.manual_seed(1)
    x, y = torch.randn(10, 2), torch.randint(0, 3, (10,))
    model = DenseMoE(input_shape=[2], num_classes=3, num_experts=3, expert_hidden=[4], gate_hidden=[4]).eval()
    with torch.no_grad():
        out = model(x)
    calls: list[str] = []
    original = DenseMoE.log

    def counting_log(self: DenseMoE, name: str, *args: object, **kwargs: object) -> None:
        calls.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(DenseMoE, "log", counting_log)
    (logged,) = tiny_trainer().validate(model, DataLoader(TensorDataset(x, y), batch_size=6), verbose=False)
    expected_gate = out.gate_probs.double().mean(0).float()
    torch.testing.assert_close(torch.tensor([logged[f"val/gate_prob/expert_{i}"] for i in range(3)]), expected_gate,
                               atol=1e-6, rtol=0)
    assert logged["val/acc"] == pytest.approx((out.log_probs.argmax(-1) == y).double().mean().item(), abs=1e-7)
    predicted = out.expert_log_probs.gather(1, out.gate_probs.argmax(-1)[:, None, None].expand(-1, 1, 3))[:, 0].argmax(-1)
    counts = torch.zeros(3, 3).index_put_((out.gate_probs.argmax(-1), predicted), torch.ones(10), accumulate=True)
    assert logged["val/mutual_information"] == pytest.approx(float(mutual_information_bits(counts)), abs=1e-6)
    per_batch = calls.count("val/loss")
    assert per_batch == 2, "val/loss is logged on each of the 2 batches"
    assert len(calls) - per_batch == 3 + 1 + 6, f"gate means, accuracy and 6 decomposition metrics once: {calls}"
