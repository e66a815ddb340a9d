"""Stochastic mixture loss, gate-less allocation, temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch

from gmnn.nn.functional.losses import entropy, per_expert_nll, softmin_allocation, stochastic_mixture_loss
from gmnn.nn.functional.temperature import check_temperature_schedule, scheduled_temperature


def test_stochastic_loss_hand_value_on_two_experts() -> None:
    log_gate = torch.log(torch.tensor([[0.25, 0.75]]))
    losses = torch.tensor([[2.0, 4.0]])
    expected = -math.log(0.25 * math.exp(-1.0) + 0.75 * math.exp(-2.0))
    assert stochastic_mixture_loss(log_gate, losses).item() == pytest.approx(expected)


def test_stochastic_loss_is_finite_with_a_zero_gate_probability() -> None:
    logits = torch.tensor([[1e4, -1e4], [0.0, 0.0]], requires_grad=True)
    log_gate = torch.log_softmax(logits, -1)
    assert log_gate[0, 1].item() < -1e3
    losses = torch.tensor([[1.0, 3.0], [2.0, 5.0]], requires_grad=True)
    loss = stochastic_mixture_loss(log_gate, losses)
    hard = torch.tensor([[0.0, float("-inf")]])
    assert stochastic_mixture_loss(hard, torch.tensor([[1.0, 3.0]])).item() == pytest.approx(0.5)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(losses.grad).all()


def test_per_expert_nll_and_entropy() -> None:
    elp = torch.log(torch.tensor([[[0.9, 0.1], [0.2, 0.8]]]))
    torch.testing.assert_close(per_expert_nll(elp, torch.tensor([1])), -torch.log(torch.tensor([[0.1, 0.8]])))
    assert entropy(torch.log(torch.tensor([0.5, 0.5]))).item() == pytest.approx(math.log(2))
    assert entropy(torch.tensor([0.0, float("-inf")])).item() == 0.0


def test_softmin_allocation_at_low_temperature_picks_the_lowest_loss_expert() -> None:
    losses = torch.stack([torch.randperm(5) for _ in range(50)]).float() * 0.1  # gaps >= 0.1
    weights = softmin_allocation(losses, 1e-2).exp()
    torch.testing.assert_close(weights.sum(-1), torch.ones(50))
    assert torch.equal(weights.argmax(-1), losses.argmin(-1))
    assert (weights.max(-1).values > 0.99).all()
    hot = softmin_allocation(torch.tensor([[1.0, 2.0]]), 1.0).exp()
    torch.testing.assert_close(hot, torch.softmax(torch.tensor([[-1.0, -2.0]]), -1))
    uniform = softmin_allocation(torch.tensor([[1.0, 2.0, 3.0]]), 1e6).exp()
    torch.testing.assert_close(uniform, torch.full((1, 3), 1 / 3))


def test_softmin_allocation_noise_changes_weights_and_is_validated() -> None:
    losses = torch.zeros(200, 3)
    noisy = softmin_allocation(losses, 1.0, noise=1.0).exp()
    assert noisy.std() > 0.05
    with pytest.raises(ValueError, match="noise"):
        softmin_allocation(losses, 1.0, noise=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        softmin_allocation(losses, 0.0)


def test_temperature_schedule_matches_the_formula() -> None:
    t0, d, start = 4.0, 0.5, 2
    expected = [4.0, 4.0, 4.0]  # epochs 0, 1, 2: before and at the start
    value = 4.0
    for e in range(start, 7):
        value = value / (1 + d * (e - start))
        expected.append(value)  # epoch e + 1
    got = [scheduled_temperature(e, t0, d, start, floor=0.01) for e in range(8)]
    assert got == pytest.approx(expected)
    assert got[4] == pytest.approx(4.0 / 1.5) and got[5] == pytest.approx(4.0 / 1.5 / 2.0)
    assert scheduled_temperature(100, t0, d, start, floor=0.3) == pytest.approx(0.3)
    assert scheduled_temperature(100, t0, 0.0, start) == 4.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 0.0, 0, 0.05), "temperature"),
        ((1.0, -0.1, 0, 0.05), "temperature_decay"),
        ((1.0, 0.1, -1, 0.05), "temperature_decay_start"),
        ((1.0, 0.1, 0, 2.0), "temperature_min"),
        ((1.0, 0.1, 0, 0.0), "temperature_min"),
    ],
)
def test_bad_schedules_fail(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_temperature_schedule(*args)
