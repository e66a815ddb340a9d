"""``predict`` of every variant of ``gmnn.models.__all__`` through ``Trainer.predict``: shapes, probabilities, argmax."""

from __future__ import annotations

import pytest
import torch

from gmnn.models import DenseMoE, RegressionMoE
from tests.conftest import tiny_trainer
from tests.models.every_variant import C, E, L_TOKENS, V, batch, build, case_id, cases, is_token_model


def _predict(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=len(x))
    (out,) = tiny_trainer().predict(model, loader)
    return out


@pytest.mark.parametrize(("name", "extra"), cases(), ids=map(case_id, cases()))
def test_predict_gives_probabilities_their_argmax_and_the_gate(name: str, extra: dict) -> None:
    model = build(name, extra)
    x, _ = batch(model, n=10)
    out = _predict(model, x)
    if is_token_model(model):  # next-token distributions at every position
        assert out["probs"].shape == (10, L_TOKENS, V)
        torch.testing.assert_close(out["probs"].sum(-1), torch.ones(10, L_TOKENS))
        assert torch.equal(out["prediction"], out["probs"].argmax(-1))
        model.eval()
        with torch.no_grad():
            logits = model(x)[0].double()
        torch.testing.assert_close(out["probs"].double(), logits.exp() / logits.exp().sum(-1, keepdim=True))
        return
    experts = model.num_experts
    assert out["gate_probs"].shape == (10, experts)
    torch.testing.assert_close(out["gate_probs"].sum(-1), torch.ones(10))
    assert torch.equal(out["expert"], out["gate_probs"].argmax(-1))
    model.eval()
    with torch.no_grad():
        forward = model(x)
    if isinstance(model, RegressionMoE):
        assert out["prediction"].shape == (10, C)
        torch.testing.assert_close(out["prediction"], forward.mean)
        return
    assert out["probs"].shape == (10, C)
    torch.testing.assert_close(out["probs"].sum(-1), torch.ones(10))
    torch.testing.assert_close(out["probs"], forward.log_probs.exp())
    assert torch.equal(out["prediction"], out["probs"].argmax(-1))
    with torch.no_grad():  # each expert's distribution, in float64, from its own network
        experts_probs = torch.stack([torch.softmax(e(x)[0].double(), -1) for e in model.experts.experts], 1)
    expected = INFERENCE[name](forward.gate_probs.double(), experts_probs, model)
    torch.testing.assert_close(out["probs"].double(), expected, atol=1e-6, rtol=1e-6)


def _mixture(gate: torch.Tensor, probs: torch.Tensor, model) -> torch.Tensor:
    k = getattr(model, "k", 0)
    if k:  # the k largest gate weights, renormalised
        gate = torch.zeros_like(gate).scatter(-1, gate.topk(k, -1).indices, gate.topk(k, -1).values)
        gate = gate / gate.sum(-1, keepdim=True)
    return (gate.unsqueeze(-1) * probs).sum(1)


def _argmax_expert(gate: torch.Tensor, probs: torch.Tensor, model) -> torch.Tensor:
    return probs[torch.arange(len(gate)), gate.argmax(-1)]


def _product(gate: torch.Tensor, probs: torch.Tensor, model) -> torch.Tensor:
    if not model.gated:  # the plain product: every weight one
        gate = torch.ones_like(gate)
    return torch.softmax((gate.unsqueeze(-1) * probs.log()).sum(1), -1)


# What each variant predicts at inference from the gate probabilities g [B, E] and the experts' p [B, E, C]
# (the design card's table). A variant missing here fails the test above: add its rule.
INFERENCE = {
    "MoEModule": _mixture, "DenseMoE": _mixture, "DualTemperatureMoE": _mixture, "GatelessMoE": _mixture,
    "TopKMoE": _mixture, "AttentionGateMoE": _mixture, "SingleModel": _mixture,
    "StochasticMoE": _argmax_expert, "ExpertLossGateMoE": _argmax_expert, "HardEMMoE": _argmax_expert,
    "ProductOfExperts": _product,
}


def test_dense_prediction_is_the_float64_mixture_of_the_experts() -> None:
    model = DenseMoE(input_shape=[2], num_classes=C, num_experts=E, expert_hidden=[8], gate_hidden=[8])
    x, _ = batch(model, n=10)
    out = _predict(model, x)
    with torch.no_grad():
        gate = torch.softmax(model.gate(x)[0].double(), -1)  # [B, E]
        experts = torch.stack([torch.softmax(e(x)[0].double(), -1) for e in model.experts.experts], 1)  # [B, E, C]
    expected = (gate.unsqueeze(-1) * experts).sum(1)
    torch.testing.assert_close(out["probs"].double(), expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(out["prediction"], expected.argmax(-1))


def test_regression_prediction_is_the_gate_weighted_mean_of_the_experts() -> None:
    model = RegressionMoE(input_shape=[2], num_classes=C, num_experts=E, expert_hidden=[8], gate_hidden=[8])
    x, _ = batch(model, n=10)
    out = _predict(model, x)
    with torch.no_grad():
        gate = torch.softmax(model.gate(x)[0].double(), -1)
        means = torch.stack([e(x)[0].double() for e in model.experts.experts], 1)
    torch.testing.assert_close(out["prediction"].double(), (gate.unsqueeze(-1) * means).sum(1), atol=1e-6, rtol=1e-6)
