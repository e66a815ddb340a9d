"""TopKMoE: sparse computation equals a dense reference; capacity overflow accounting."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.models import TopKMoE
from tests.conftest import tiny_trainer

COMMON = dict(input_shape=[2], num_classes=3, num_experts=4, expert_hidden=[8], gate_hidden=[8])


def _dense_reference(model: TopKMoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every sample; non-selected experts masked out of the mixture."""
    expert_log_probs = torch.log_softmax(model.experts(x)[0], -1)  # [B, E, C]
    log_gate = torch.log_softmax(model.gate(x)[0], -1)
    top = log_gate.topk(model.k, -1).indices
    selected = torch.zeros_like(log_gate, dtype=torch.bool).scatter(-1, top, True)
    masked = log_gate.masked_fill(~selected, float("-inf"))
    if not model.training or model.hparams.gate_gradient == "renormalize":
        return torch.logsumexp(torch.log_softmax(masked, -1).unsqueeze(-1) + expert_log_probs, 1)
    residual = torch.logsumexp(log_gate.masked_fill(selected, float("-inf")), -1, keepdim=True) - math.log(3)
    return torch.logaddexp(torch.logsumexp(masked.unsqueeze(-1) + expert_log_probs, 1), residual)


@pytest.mark.parametrize("capacity_factor", [0.0, 10.0], ids=["exact", "ample_capacity"])
@pytest.mark.parametrize(("k", "mode"), [(1, "residual"), (2, "residual"), (2, "renormalize")])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_sparse_top_k_equals_the_masked_dense_reference(k: int, mode: str, capacity_factor: float, training: bool) -> None:
    model = TopKMoE(k=k, gate_gradient=mode, capacity_factor=capacity_factor, **COMMON).train(training)
    x, y = torch.randn(24, 2), torch.randint(0, 3, (24,))
    out = model(x)
    expected = _dense_reference(model, x)
    torch.testing.assert_close(out.log_probs, expected, atol=1e-5, rtol=1e-5)
    params = list(model.parameters())
    grads = torch.autograd.grad(torch.nn.functional.nll_loss(out.log_probs, y), params, allow_unused=True)
    ref = torch.autograd.grad(torch.nn.functional.nll_loss(expected, y), params, allow_unused=True)
    for a, b in zip(grads, ref):
        if a is None or b is None:  # unrouted experts: no gradient in the sparse model, zero in the reference
            assert (a if a is not None else b).abs().max() == 0
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if capacity_factor:
        assert not out.dropped.any()


def test_capacity_overflow_is_counted_and_falls_back_to_uniform() -> None:
    model = TopKMoE(k=1, capacity_factor=0.5, **COMMON)  # capacity ceil(0.5 * 16 / 4) = 2 per expert
    out = model(torch.randn(16, 2))
    counts = torch.bincount(out.selected[:, 0], minlength=4)
    assert int(out.dropped.sum()) == int((counts - 2).clamp(min=0).sum()) >= 8
    dropped = out.selected_log_probs[out.dropped[:, 0], 0]
    torch.testing.assert_close(dropped, torch.full_like(dropped, -math.log(3)))
    torch.testing.assert_close(out.log_probs.exp().sum(-1), torch.ones(16))


def test_overflow_fraction_is_logged() -> None:
    model = TopKMoE(k=2, capacity_factor=0.5, **COMMON)
    x, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    data = DataLoader(TensorDataset(x, y), batch_size=32)
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, data, data)
    assert "train/overflow_fraction_epoch" in trainer.callback_metrics
    model.eval()
    with torch.no_grad():
        expected = model(x).dropped.float().mean()
    assert expected > 0
    torch.testing.assert_close(trainer.callback_metrics["val/overflow_fraction"], expected)


def test_bad_capacity_factor_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="capacity_factor"):
        TopKMoE(k=1, capacity_factor=-1.0, **COMMON)


def test_capacity_factor_is_a_saved_hyperparameter() -> None:
    assert TopKMoE(k=2, capacity_factor=1.5, **COMMON).hparams.capacity_factor == 1.5


def test_stochastic_gate_gradient_trains_gate_and_routed_experts_separately() -> None:
    from gmnn.nn.losses import per_expert_nll, stochastic_mixture_loss

    model = TopKMoE(k=1, gate_gradient="stochastic", input_shape=[2], num_classes=3, num_experts=4, expert_hidden=[8])
    model.train()
    x, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    out = model(x)
    terms = model.loss_terms(out, x, y)
    assert set(terms) == {"nll", "gate"}
    # the gate term is the stochastic loss over every expert, and its gradient reaches only the gate
    every = torch.log_softmax(model.experts(x)[0], -1)
    expected = stochastic_mixture_loss(torch.log_softmax(out.gate_logits, -1), per_expert_nll(every, y))
    torch.testing.assert_close(terms["gate"], expected)
    params = list(model.gate.parameters()) + list(model.experts.parameters())
    gate_grads = torch.autograd.grad(terms["gate"], params, allow_unused=True, retain_graph=True)
    n_gate = len(list(model.gate.parameters()))
    assert all(g is not None and g.abs().sum() > 0 for g in gate_grads[:n_gate])
    assert all(g is None for g in gate_grads[n_gate:])
    # the task term trains only the routed experts, not the gate (k = 1: the renormalised weight is 1)
    model.zero_grad()
    terms["nll"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.gate.parameters())
    routed = set(out.selected.flatten().tolist())
    for e in range(4):
        grad = sum(float(p.grad.abs().sum()) for p in model.experts[e].parameters() if p.grad is not None)
        assert (grad > 0) == (e in routed)
    model.eval()
    assert model(x).expert_log_probs is None and set(model.loss_terms(model(x), x, y)) == {"nll"}


def test_attention_gate_refuses_the_stochastic_gate_gradient() -> None:
    from gmnn.models import AttentionGateMoE

    with pytest.raises(ValueError, match="gate_gradient"):
        AttentionGateMoE(k=1, gate_gradient="stochastic", input_shape=[2], num_classes=3, num_experts=4)
