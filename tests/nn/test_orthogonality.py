"""The reference's two ``w_ortho`` regularizers: hand values, the reference's loops, and the YAML route."""

from __future__ import annotations

import math

import pytest
import torch

from gmnn.models import DenseMoE
from gmnn.nn.functional.regularizers import orthogonality_loss, prediction_class_cv


def reference_orthogonality(y: torch.Tensor) -> float:
    """moe_pre_softmax_expectation_model.py 205-216: sum over i<j of |Y_i Y_j^T| ([B, B]), then its mean."""
    batch, experts, _ = y.shape
    total = torch.zeros(batch, batch, dtype=torch.float64)
    for i in range(experts - 1):
        for j in range(i + 1, experts):
            total += (y[:, i].double() @ y[:, j].double().T).abs()
    return float(total.mean())


def test_orthogonality_hand_values() -> None:
    # two experts, one sample: <[1, 0], [0, 1]> = 0 (orthogonal), <[0.5, 0.5], [0.5, 0.5]> = 0.5
    assert orthogonality_loss(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])).item() == 0.0
    assert orthogonality_loss(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]])).item() == pytest.approx(0.5)
    # two samples, experts a=[1,0], b=[0,1] on sample 0 and b=[1,0] on sample 1: Y_0 Y_1^T = [[0,1],[0,1]] -> mean 0.5
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    assert orthogonality_loss(y).item() == pytest.approx(0.5)
    # one expert: no pair
    assert orthogonality_loss(torch.rand(3, 1, 4)).item() == 0.0


@pytest.mark.parametrize(("batch", "experts", "classes"), [(4, 3, 5), (6, 5, 10), (3, 2, 2)])
def test_orthogonality_equals_the_reference_loops_also_for_signed_outputs(batch: int, experts: int, classes: int) -> None:
    logits = torch.randn(batch, experts, classes)  # signed: the |.| matters (the reference's pre-softmax experts)
    assert orthogonality_loss(logits).item() == pytest.approx(reference_orthogonality(logits), rel=1e-5)
    probs = torch.softmax(logits, -1)
    assert orthogonality_loss(probs).item() == pytest.approx(reference_orthogonality(probs), rel=1e-5)


def test_prediction_class_cv_hand_value_uses_the_unbiased_std() -> None:
    # class mass over the batch (3, 1): mean 2, unbiased var ((1)^2 + (1)^2) / 1 = 2 -> CV^2 = 2 / 4
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    assert prediction_class_cv(p).item() == pytest.approx(0.5)
    assert prediction_class_cv(torch.full((4, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-7)


def test_regularizers_from_yaml_names_add_the_weighted_reference_values() -> None:
    model = DenseMoE(input_shape=[2], num_classes=3, num_experts=3, regularizers={"orthogonality": 0.5, "prediction_class_cv": 2.0})
    x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    model.train()
    out = model(x)
    terms = model.loss_terms(out, x, y)
    probs = out.expert_log_probs.exp().detach()
    assert terms["orthogonality"].item() == pytest.approx(0.5 * reference_orthogonality(probs), rel=1e-5)
    mass = (out.gate_probs.detach().double().unsqueeze(-1) * probs.double()).sum((0, 1))  # [C]
    expected_cv = float(mass.std() / mass.mean()) ** 2  # torch.std: unbiased, as the reference's loss_importance
    assert terms["prediction_class_cv"].item() == pytest.approx(2.0 * expected_cv, rel=1e-5)
    assert not math.isclose(expected_cv, float(mass.var(correction=0) / mass.mean() ** 2), rel_tol=1e-3)
    # both reach the experts and the gate
    (terms["orthogonality"] + terms["prediction_class_cv"]).backward()
    assert model.gate.head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.experts.parameters())
