"""TopKMoE: sparse computation equals a dense reference; capacity overflow accounting."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.models import TopKMoE
from tests.conftest import tiny_trainer

COMMON = dict(input_shape=[2], num_classes=3, num_experts=4, expert_hidden=[8], gate_hidden=[8])


GATE_A, GATE_B = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]  # gate probabilities of the two inputs
EXPERTS = [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]  # each expert's class probabilities, whatever the input


def _hand_set(k: int, mode: str = "residual", capacity_factor: float = 0.0) -> TopKMoE:
    """3 experts, 2 classes; input (1, 0) gets gate GATE_A, input (0, 1) gets GATE_B."""
    model = TopKMoE(k=k, gate_gradient=mode, capacity_factor=capacity_factor, input_shape=[2], num_classes=2,
                    num_experts=3, expert_hidden=[2], gate_hidden=[2])
    with torch.no_grad():
        body, head = model.gate.body[0], model.gate.head
        body.weight.copy_(torch.eye(2)), body.bias.zero_()  # hidden = relu(x) = x for one-hot x
        head.weight.copy_(torch.tensor([GATE_A, GATE_B]).log().T), head.bias.zero_()
        for expert, probs in zip(model.experts.experts, EXPERTS):
            expert.head.weight.zero_()
            expert.head.bias.copy_(torch.tensor(probs).log())
    return model


X = torch.eye(2)  # input A, input B
# p(y | x) by hand. eval / renormalize: the k largest gate weights renormalised; residual (training):
# the k weights as they are, the rest of the gate mass on the uniform distribution (1/2 per class).
HAND = {
    # (k, mode, training): (p(. | A), p(. | B))
    (1, "residual", False): ([0.9, 0.1], [0.5, 0.5]),  # the top expert alone: 0 for A, 2 for B
    (1, "residual", True): ([0.5 * 0.9 + 0.5 * 0.5, 0.5 * 0.1 + 0.5 * 0.5], [0.5, 0.5]),
    (2, "residual", False): ([0.625 * 0.9 + 0.375 * 0.2, 0.625 * 0.1 + 0.375 * 0.8],  # 0.5/0.8, 0.3/0.8
                             [0.625 * 0.5 + 0.375 * 0.2, 0.625 * 0.5 + 0.375 * 0.8]),
    (2, "residual", True): ([0.45 + 0.06 + 0.1, 0.05 + 0.24 + 0.1], [0.25 + 0.06 + 0.1, 0.25 + 0.24 + 0.1]),
    (2, "renormalize", True): ([0.6375, 0.3625], [0.3875, 0.6125]),
    (3, "residual", False): ([0.45 + 0.06 + 0.1, 0.05 + 0.24 + 0.1], [0.18 + 0.06 + 0.25, 0.02 + 0.24 + 0.25]),
    (3, "residual", True): ([0.61, 0.39], [0.49, 0.51]),  # k = E: the dense mixture either way
}


@pytest.mark.parametrize("capacity_factor", [0.0, 10.0], ids=["exact", "ample_capacity"])
@pytest.mark.parametrize(("k", "mode", "training"), HAND, ids=lambda v: str(v))
def test_top_k_mixture_equals_the_hand_computed_probabilities(k: int, mode: str, training: bool, capacity_factor: float) -> None:
    model = _hand_set(k, mode, capacity_factor).train(training)
    out = model(X)
    torch.testing.assert_close(out.log_probs.exp(), torch.tensor(HAND[k, mode, training]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.gate_probs, torch.tensor([GATE_A, GATE_B]), atol=1e-6, rtol=0)
    assert out.selected.tolist() == [[0, 1, 2][:k], [2, 1, 0][:k]]
    if capacity_factor:
        assert not out.dropped.any()


@pytest.mark.parametrize(("k", "expected"), [
    # d(-log p(y=0 | A)) / d gate logit j = -g_j (c_j - p) / p, c_j = p_j(y=0) for routed j, 1/2 otherwise, p = sum g_j c_j
    (1, [-0.5 * 0.2 / 0.7, 0.3 * 0.2 / 0.7, 0.2 * 0.2 / 0.7]),  # c = [0.9, 0.5, 0.5], p = 0.7
    (2, [-0.5 * 0.29 / 0.61, 0.3 * 0.41 / 0.61, 0.2 * 0.11 / 0.61]),  # c = [0.9, 0.2, 0.5], p = 0.61
])
def test_residual_gate_gradient_equals_the_hand_computed_one(k: int, expected: list[float]) -> None:
    model = _hand_set(k).train()
    out = model(X[:1])
    (grad,) = torch.autograd.grad(torch.nn.functional.nll_loss(out.log_probs, torch.tensor([0])), out.gate_logits)
    torch.testing.assert_close(grad, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_only_the_routed_experts_get_a_gradient() -> None:
    model = _hand_set(2).train()
    out = model(X[:1])  # input A: experts 0 and 1
    torch.nn.functional.nll_loss(out.log_probs, torch.tensor([0])).backward()
    grads = [float(e.head.bias.grad.abs().sum()) if e.head.bias.grad is not None else 0.0 for e in model.experts.experts]
    assert grads[0] > 0 and grads[1] > 0 and grads[2] == 0


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
    from gmnn.nn.functional.losses import per_expert_nll, stochastic_mixture_loss

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
