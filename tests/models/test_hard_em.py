"""Hard EM: the E-step assignment and both M-step losses, by hand on the hand-set model."""

from __future__ import annotations

import math

import pytest
import torch

from gmnn.models import HardEMMoE
from tests.conftest import tiny_trainer
from tests.hand_set import two_expert_model

pytestmark = pytest.mark.filterwarnings("ignore:.*self.log.*:UserWarning")

A, B = [1.0, 0.0], [0.0, 1.0]
GATE = {0: [0.75, 0.25], 1: [0.25, 0.75]}  # input -> gate (tests/hand_set.py)
EXPERT = [[0.8, 0.2], [0.3, 0.7]]  # expert -> p(y)


def reference_em_loss(inputs: list[int], labels: list[int], m_step: str) -> float:
    """The reference's E step (argmax of g_i p_i(y)) and M step, written out per sample in float64."""
    total = 0.0
    for i, y in zip(inputs, labels):
        scores = [GATE[i][e] * EXPERT[e][y] for e in range(2)]
        a = scores.index(max(scores))
        g, p = GATE[i][a], EXPERT[a][y]
        total += -(math.log(g) + math.log(p)) if m_step == "complete_data" else -g * math.log(p + 1e-7)
    return total / len(labels)


@pytest.mark.parametrize("m_step", ["complete_data", "gate_weighted"])
def test_em_loss_assigns_by_posterior_not_by_gate_and_matches_the_formula(m_step: str) -> None:
    model = two_expert_model("HardEMMoE")
    model.hparams.m_step = m_step
    # (A, y=1): the gate prefers expert 0 (3/4) but g p = [0.15, 0.175]: the E step picks expert 1.
    # (B, y=0): g p = [0.2, 0.225]: expert 1 though expert 0 predicts class 0 better.
    inputs, labels = [0, 0, 1, 1], [0, 1, 0, 1]
    x = torch.tensor([[A, B][i] for i in inputs])
    y = torch.tensor(labels)
    model.train()
    out = model(x)
    terms = model.loss_terms(out, x, y)
    assert terms["nll"].item() == pytest.approx(reference_em_loss(inputs, labels, m_step), rel=1e-5)


def test_prediction_is_the_gate_argmax_expert_alone() -> None:
    model = two_expert_model("HardEMMoE").eval()
    with torch.no_grad():
        out = model(torch.tensor([A, B]))
    torch.testing.assert_close(out.log_probs.exp(), torch.tensor([EXPERT[0], EXPERT[1]]))
    assert out.selected.flatten().tolist() == [0, 1]


def test_gate_weighted_gradient_lowers_the_gate_of_a_wrong_assigned_expert() -> None:
    """d/dg_a of -g_a log p_a is -log p_a > 0: the reference's M step pushes g_a down (complete-data pushes it up)."""
    x, y = torch.tensor([A]), torch.tensor([0])  # assigned expert 0 (g p = [0.6, 0.075]), p_0(0) = 0.8
    for m_step in ("gate_weighted", "complete_data"):
        model = two_expert_model("HardEMMoE")
        model.hparams.m_step = m_step
        model.train()
        out = model(x)
        out.gate_logits.retain_grad()
        model.loss_terms(out, x, y)["nll"].backward()
        logit_grad = out.gate_logits.grad[0]
        # d loss / d logit_0 = dL/dg_0 * g_0 (1 - g_0); dL/dg_0 = -log 0.8 > 0 (gate_weighted), -1/g_0 (complete)
        expected = (-math.log(0.8 + 1e-7) if m_step == "gate_weighted" else -1 / 0.75) * 0.75 * 0.25
        assert logit_grad[0].item() == pytest.approx(expected, rel=1e-4)


def test_bad_m_step_is_refused() -> None:
    with pytest.raises(ValueError, match="m_step must be one of"):
        HardEMMoE(m_step="soft")


def test_hard_em_learns_two_blobs() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=generator) + torch.tensor([2.0, 0.0]) * torch.randint(0, 2, (256, 1), generator=generator)
    y = (x[:, 0] > 1).long()
    model = HardEMMoE(input_shape=[2], num_classes=2, num_experts=2, lr=0.02)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    with torch.no_grad():
        before = (model.eval()(x).log_probs.argmax(-1) == y).float().mean()
    tiny_trainer(max_epochs=15).fit(model, data)
    with torch.no_grad():
        after = (model.eval()(x).log_probs.argmax(-1) == y).float().mean()
    assert after > 0.9 and after > before + 0.2
