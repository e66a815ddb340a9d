"""Reviving dead experts (revive_below) and decoupled weight decay."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.models import AttentionGateMoE, DenseMoE
from gmnn.callbacks import ReviveDeadExperts
from gmnn.models.revival import ExpertRevival, split_expert
from tests.conftest import tiny_trainer


def test_plan_splits_the_busiest_expert_into_each_dead_one() -> None:
    revival = ExpertRevival(threshold=0.05)
    assert revival.plan(torch.tensor([0.5, 0.3, 0.0, 0.19, 0.01])) == [(0, 2), (1, 4)]
    assert revival.plan(torch.tensor([0.25, 0.25, 0.2, 0.15, 0.15])) == []


def test_usage_is_the_mean_gate_probability_over_recorded_batches() -> None:
    revival = ExpertRevival(threshold=0.1)
    revival.record(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    revival.record(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(revival.mean_usage(), torch.tensor([0.75, 0.25]))
    revival.reset()
    assert revival.mean_usage() is None


def _conv_moe(**kwargs: object) -> DenseMoE:
    return DenseMoE(input_shape=[1, 12, 12], num_classes=3, num_experts=4, expert="conv", expert_hidden=[5, 8],
                    gate="conv", gate_hidden=[8], **kwargs)


def test_exact_split_keeps_the_mixture_and_copies_the_optimizer_state() -> None:
    torch.manual_seed(0)
    model = _conv_moe()
    with torch.no_grad():
        model.expert_logit_layer().bias[3] = -40.0  # expert 3 is dead: the split must not change the mixture
    x = torch.randn(16, 1, 12, 12)
    optimizer = torch.optim.Adam(model.parameters())
    model(x).log_probs.sum().neg().backward()
    optimizer.step()
    before = model(x)
    split_expert(model.experts, 1, 3, model.expert_logit_layer(), [optimizer], 0.0, torch.Generator())
    after = model(x)
    torch.testing.assert_close(after.log_probs, before.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(after.gate_probs[:, 1], before.gate_probs[:, 1] / 2)
    torch.testing.assert_close(after.gate_probs[:, 3], before.gate_probs[:, 1] / 2)
    for src, dst in zip(model.experts[1].parameters(), model.experts[3].parameters()):
        assert torch.equal(src, dst)
        torch.testing.assert_close(optimizer.state[dst]["exp_avg_sq"], optimizer.state[src]["exp_avg_sq"])
        assert optimizer.state[dst]["exp_avg"] is not optimizer.state[src]["exp_avg"]


def test_fit_revives_an_expert_the_gate_has_shut_out() -> None:
    torch.manual_seed(0)
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=3, revive_below=0.05, revive_epochs=1)
    with torch.no_grad():
        model.expert_logit_layer().bias[2] = -30.0  # expert 2 is dead from the start
    dead_before = [p.clone() for p in model.experts[2].parameters()]
    data = DataLoader(TensorDataset(torch.randn(64, 2), torch.randint(0, 2, (64,))), batch_size=16)
    trainer = tiny_trainer(max_epochs=2)
    trainer.fit(model, data)
    assert trainer.callback_metrics["train/revived_experts"] == 1.0  # after epoch 1
    (callback,) = [c for c in trainer.callbacks if isinstance(c, ReviveDeadExperts)]  # added by revive_below
    assert callback.revival.epoch_usage is None  # epoch 2 is past revive_epochs: nothing kept
    assert model.expert_logit_layer().bias[2] > -10  # took over half of a live expert's gate mass
    assert not any(torch.equal(a, b) for a, b in zip(dead_before, model.experts[2].parameters()))
    with torch.no_grad():
        assert model(torch.randn(256, 2)).gate_probs.mean(0)[2] > 0.05


def test_attention_gate_revival_copies_the_busiest_expert_and_leaves_the_gate_alone() -> None:
    torch.manual_seed(0)
    model = AttentionGateMoE(input_shape=[2], num_classes=2, num_experts=4, revive_below=0.05)
    assert model.expert_logit_layer() is None  # the logits are attention scores: no gate row to split
    x = torch.randn(256, 2)
    with torch.no_grad():
        before = model(x)
    gate = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("gate.", "attention."))}
    dead_before = [p.clone() for p in model.experts[2].parameters()]
    revival = ReviveDeadExperts(0.05).revival
    revival.finish_epoch(None, torch.tensor([0.6, 0.3, 0.01, 0.09]))  # expert 2 below 0.05
    assert revival.revive(model) == [(0, 2)]
    assert revival.epoch_usage is None
    for dead, busiest, old in zip(model.experts[2].parameters(), model.experts[0].parameters(), dead_before):
        assert not torch.equal(dead, old)  # expert 2 is now a copy of expert 0, up to 5% multiplicative noise
        torch.testing.assert_close(dead, busiest, rtol=0.25, atol=1e-6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in gate.items())
    with torch.no_grad():
        after = model(x)
    # its key is now (almost) the busiest expert's, so the attention gate scores the two alike
    gap_before = (before.gate_logits[:, 2] - before.gate_logits[:, 0]).abs().mean()
    gap_after = (after.gate_logits[:, 2] - after.gate_logits[:, 0]).abs().mean()
    assert gap_after < 0.2 * gap_before
    torch.testing.assert_close(after.expert_log_probs[:, 2], after.expert_log_probs[:, 0], atol=0.2, rtol=0)


def test_the_callback_added_by_hand_revives_with_its_own_threshold() -> None:
    """No model option: ReviveDeadExperts in the trainer's callbacks, usage from the model's epoch mean."""
    torch.manual_seed(0)
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=3)
    assert model.configure_callbacks() == []
    with torch.no_grad():
        model.expert_logit_layer().bias[2] = -30.0
    data = DataLoader(TensorDataset(torch.randn(64, 2), torch.randint(0, 2, (64,))), batch_size=16)
    trainer = tiny_trainer(max_epochs=1, callbacks=[ReviveDeadExperts(below=0.2, epochs=1)])
    trainer.fit(model, data)
    assert trainer.callback_metrics["train/revived_experts"] == 1.0  # expert 2 (usage ~0) only
    assert model.expert_logit_layer().bias[2] > -10


def test_the_callback_refuses_a_threshold_the_model_cannot_meet() -> None:
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=4)
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,))), batch_size=8)
    with pytest.raises(ValueError, match=r"revive_below must be in \[0, 1 / num_experts = 0.25\)"):
        tiny_trainer(max_epochs=1, callbacks=[ReviveDeadExperts(below=0.3)]).fit(model, data)
    with pytest.raises(ValueError, match=r"below must be in \(0, 1 / num_experts\)"):
        ReviveDeadExperts(below=0.0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"revive_below": 0.25}, r"revive_below must be in \[0, 1 / num_experts = 0.25\)"),
    ({"revive_below": -0.1}, "revive_below"),
    ({"revive_epochs": -1}, "revive_epochs must be an integer >= 0"),
])
def test_bad_revival_arguments_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DenseMoE(num_experts=4, **kwargs)


@pytest.mark.parametrize("decoupled", [True, False])
def test_decoupled_weight_decay_shrinks_weights_by_lr_times_decay(decoupled: bool) -> None:
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=2, lr=0.1, weight_decay=0.01,
                     decoupled_weight_decay=decoupled)
    optimizer = model.configure_optimizers()
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for old, new in zip(before, model.parameters()):
        if decoupled:  # w <- w (1 - lr * decay); the zero gradient moves nothing
            torch.testing.assert_close(new.detach(), old * (1 - 0.1 * 0.01))
        else:  # the L2 term is Adam's whole gradient: every nonzero weight moves by about lr
            moved = (new.detach() - old).abs()[old != 0]
            torch.testing.assert_close(moved, torch.full_like(moved, 0.1), rtol=1e-3, atol=1e-6)
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.1)
