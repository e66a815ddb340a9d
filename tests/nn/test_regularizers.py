"""Gate regularizers: hand-computed values, a loop reference, normalisation, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from gmnn.nn.functional.regularizers import (
    allocation_loss,
    ideal_gate_loss,
    importance_loss,
    load_balancing_loss,
    router_z_loss,
    sample_distances,
    sample_similarity_terms,
)


def test_importance_is_zero_for_a_uniform_gate_and_hand_computed_for_one_hot() -> None:
    assert importance_loss(torch.full((6, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-7)
    # every sample on expert 0: importance (4, 0, 0), mean 4/3, population var 32/9 -> CV^2 = 2 = E - 1
    one_hot = torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1)
    assert importance_loss(one_hot).item() == pytest.approx(2.0)
    # two samples on expert 0, one on expert 1 (E=2): importance (2, 1): var 0.25, mean^2 2.25
    mixed = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert importance_loss(mixed).item() == pytest.approx(0.25 / 2.25)


def test_importance_accepts_leading_axes() -> None:
    g = torch.softmax(torch.randn(2, 5, 3), -1)
    assert importance_loss(g).item() == pytest.approx(importance_loss(g.reshape(10, 3)).item())


def _loop_reference(g: torch.Tensor, d: torch.Tensor) -> tuple[float, float]:
    batch, experts = g.shape
    same = different = 0.0
    for i in range(batch):
        for j in range(batch):
            s = sum(float(g[i, e] * g[j, e]) for e in range(experts)) / experts
            c = sum(float(g[i, e] * g[j, f]) for e in range(experts) for f in range(experts) if e != f)
            same += s * float(d[i, j])
            different += c / (experts * experts - experts) * float(d[i, j])
    return same, different / batch**2


@pytest.mark.parametrize(("batch", "experts"), [(5, 3), (4, 2), (7, 4)])
def test_sample_similarity_equals_a_double_loop(batch: int, experts: int) -> None:
    g = torch.softmax(torch.randn(batch, experts) * 2, -1)
    x = torch.randn(batch, 3, 2)
    d = sample_distances(x)
    same, different = sample_similarity_terms(g, d)
    ref_same, ref_different = _loop_reference(g, d)
    assert same.item() == pytest.approx(ref_same, rel=1e-5)
    assert different.item() == pytest.approx(ref_different, rel=1e-5)


def test_euclidean_distances_are_scaled_by_the_batch_maximum() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 2.0]])
    d = sample_distances(x)
    expected = torch.tensor([[0.0, 5.0, 2.0], [5.0, 0.0, math.sqrt(13)], [2.0, math.sqrt(13), 0.0]]) / 5
    torch.testing.assert_close(d, expected, atol=1e-4, rtol=1e-4)
    cos = sample_distances(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), "cosine")
    torch.testing.assert_close(cos, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_sample_similarity_is_lower_when_similar_samples_share_an_expert() -> None:
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    d = sample_distances(x)
    grouped = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    crossed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])

    def loss(g: torch.Tensor) -> float:
        same, different = sample_similarity_terms(g, d)
        return float(1.0 * same - 1.0 * different)

    assert loss(grouped) < loss(crossed)


def test_load_balancing_is_one_when_balanced_and_e_when_collapsed() -> None:
    balanced = torch.eye(4)
    assert load_balancing_loss(balanced).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(8, 1)
    assert load_balancing_loss(collapsed).item() == pytest.approx(4.0)


def test_router_z_loss_hand_value_and_gradient() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], requires_grad=True)
    # logsumexp: log 2 and log 4
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    z = router_z_loss(logits)
    assert z.item() == pytest.approx(expected)
    z.backward()
    assert logits.grad.abs().sum() > 0


def test_ideal_gate_is_mse_to_the_lowest_loss_expert() -> None:
    g = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    losses = torch.tensor([[1.0, 2.0], [3.0, 0.5]])
    # targets (1, 0) and (0, 1): squared errors 0.25, 0.25, 0.04, 0.04 -> mean 0.145
    assert ideal_gate_loss(g, losses).item() == pytest.approx(0.145)


def test_allocation_loss_is_cross_entropy_to_the_softmin() -> None:
    log_gate = torch.log(torch.tensor([[0.25, 0.75]]))
    losses = torch.tensor([[0.0, math.log(3.0)]])  # softmin at T=1: (3/4, 1/4)
    expected = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    assert allocation_loss(log_gate, losses, 1.0).item() == pytest.approx(expected)


def test_reference_betas_rescale_by_batch_squared_for_same_only() -> None:
    """The configs' reference-equivalent betas: at B = 512 -> 128 only beta_s changes, by (512/128)^2 = 16.

    The reference (moe_models_base.py) computes beta_s * sum_ij S_ij - beta_d * sum_ij D_ij / B^2 on distances
    divided by the batch maximum, as gmnn does; re-implemented here with its double loop over experts.
    """

    def reference_terms(g: torch.Tensor, dist: torch.Tensor) -> tuple[float, float]:
        batch, experts = g.shape
        same = torch.zeros(batch, batch)
        diff = torch.zeros(batch, batch)
        for i in range(experts):
            for j in range(experts):
                pair = g[:, i].view(-1, 1) * g[:, j].view(1, -1) * dist
                if i == j:
                    same += pair / experts
                else:
                    diff += pair / (experts**2 - experts)
        return float(same.sum()), float(diff.sum() / batch**2)

    torch.manual_seed(0)
    x, g = torch.randn(512, 20), torch.softmax(torch.randn(512, 5), -1)
    terms = {}
    for batch in (512, 128):
        dist = torch.cdist(x[:batch], x[:batch])
        dist = dist / dist.max()
        same, diff = sample_similarity_terms(g[:batch], sample_distances(x[:batch]))
        ref_same, ref_diff = reference_terms(g[:batch], dist)
        assert same.item() == pytest.approx(ref_same, rel=1e-4) and diff.item() == pytest.approx(ref_diff, rel=1e-4)
        terms[batch] = (same.item(), diff.item(), torch.cdist(x[:batch], x[:batch]).max().item())
    # before the division by the batch maximum the 'same' sum grows as B^2: beta_s 1e-6 at 512 is 1.6e-5 at 128 ...
    raw_ratio = terms[512][0] * terms[512][2] / (terms[128][0] * terms[128][2])
    assert raw_ratio == pytest.approx(16, rel=0.05)
    # ... a little less after it, since the batch maximum grows with B (15.3x on MNIST batches, 13.9x here)
    assert 12 < terms[512][0] / terms[128][0] < 16
    raw_diff = terms[512][1] * terms[512][2] / (terms[128][1] * terms[128][2])
    assert raw_diff == pytest.approx(1, rel=0.05)  # and beta_d carries over unchanged
