"""Paper mode: each option computes what the reference (yamsgithub/modular_deep_learning) computes.

The hand set: 3 experts, 2 classes; input A = (1, 0) gets gate [0.5, 0.3, 0.2], input B = (0, 1) gets
[0.2, 0.3, 0.5]; expert i predicts EXPERTS[i] whatever the input. The reference's formulas are written
out below in a few lines of torch, on probabilities as the reference computes them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gmnn.models import AttentionGateMoE, DenseMoE, ExpertLossGateMoE, ProductOfExperts, StochasticMoE, TopKMoE
from gmnn.nn.functional.regularizers import importance_loss

GATES = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
EXPERTS = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
X, Y = torch.eye(2), torch.tensor([0, 1])
SMALL = dict(input_shape=[2], num_classes=2, num_experts=3, expert_hidden=[2], gate_hidden=[2])


def _hand_set(model: DenseMoE | TopKMoE, experts: torch.Tensor = EXPERTS) -> DenseMoE | TopKMoE:
    with torch.no_grad():
        body, head = model.gate.body[0], model.gate.head
        body.weight.copy_(torch.eye(2)), body.bias.zero_()  # hidden = relu(x) = x for one-hot x
        head.weight.copy_(GATES.log().T), head.bias.zero_()
        for expert, probs in zip(model.experts.experts, experts):
            expert.head.weight.zero_()
            expert.head.bias.copy_(probs.log())
    return model


# ------------------------------------------------------------------ objective
def reference_expectation_loss(gates: torch.Tensor, experts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """moe_expectation_model line 58 and cross_entropy_loss: NLL of log(softmax(sum_i g_i p_i) + 1e-15)."""
    output = F.softmax((gates.unsqueeze(-1) * experts).sum(1), dim=1)
    return F.nll_loss(torch.log(output + 1e-15), y)


def test_softmax_of_mixture_is_the_reference_expectation_models_output_and_loss() -> None:
    model = _hand_set(DenseMoE(objective="softmax_of_mixture", **SMALL)).train()
    out = model(X)
    # mixtures by hand: A [0.61, 0.39], B [0.49, 0.51]; softmax of [a, b] gives sigmoid(a - b) to class 0
    hand = torch.tensor([[1 / (1 + math.exp(-0.22)), 0], [0, 1 / (1 + math.exp(-0.02))]])
    hand[0, 1], hand[1, 0] = 1 - hand[0, 0], 1 - hand[1, 1]
    torch.testing.assert_close(out.log_probs.exp(), hand, atol=1e-6, rtol=0)
    expected = reference_expectation_loss(GATES, EXPERTS.expand(2, -1, -1), Y)
    torch.testing.assert_close(model.loss_terms(out, X, Y)["nll"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(expected, -(hand[0, 0].log() + hand[1, 1].log()) / 2, atol=1e-6, rtol=0)


def test_the_default_objective_is_still_the_mixture_likelihood() -> None:
    model = _hand_set(DenseMoE(**SMALL)).train()
    torch.testing.assert_close(model.loss_terms(model(X), X, Y)["nll"], -torch.tensor([0.61, 0.51]).log().mean())


def test_softmax_of_mixture_cannot_go_below_its_floor_even_with_perfect_experts() -> None:
    # every expert certain and right on both inputs: the mixture is one-hot, its softmax e / (e + C - 1)
    perfect = torch.tensor([[1 - 1e-7, 1e-7]] * 3)
    model = _hand_set(DenseMoE(objective="softmax_of_mixture", **SMALL), perfect)
    loss = model.loss_terms(model(X[:1]), X[:1], Y[:1])["nll"]
    torch.testing.assert_close(loss, torch.tensor(math.log(1 + math.exp(-1))), atol=1e-5, rtol=0)
    assert math.log(1 + 9 / math.e) == pytest.approx(1.4612, abs=1e-4)  # the floor at C = 10 (MNIST)


def test_the_attention_dense_mixture_takes_the_objective_too() -> None:
    model = AttentionGateMoE(objective="softmax_of_mixture", **SMALL)
    out = model(X)
    mixture = (out.gate_probs.unsqueeze(-1) * out.expert_log_probs.exp()).sum(1)
    torch.testing.assert_close(out.log_probs, torch.log_softmax(mixture, dim=-1))


@pytest.mark.parametrize("build", [
    lambda: TopKMoE(k=1, objective="softmax_of_mixture", **SMALL),
    lambda: StochasticMoE(objective="softmax_of_mixture", **SMALL),
    lambda: ProductOfExperts(objective="softmax_of_mixture", **SMALL),
    lambda: AttentionGateMoE(k=1, objective="softmax_of_mixture", **SMALL),
    lambda: DenseMoE(objective="softmax", **SMALL),
], ids=["topk", "stochastic", "product", "attention_top1", "unknown"])
def test_objective_without_a_dense_mixture_or_unknown_is_refused(build) -> None:
    with pytest.raises(ValueError, match="objective"):
        build()


# ----------------------------------------------------------------- importance
def reference_loss_importance(gates: torch.Tensor, w: float) -> torch.Tensor:
    """helper/moe_models.py loss_importance: w * (torch.std(importance) / mean(importance))^2."""
    importance = gates.sum(0)
    return w * torch.square(torch.std(importance) / torch.mean(importance))


def test_unbiased_importance_is_the_references_loss_importance() -> None:
    gates = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])  # importance [1.3, 0.8, 0.9], mean 1
    assert float(importance_loss(gates, "unbiased")) == pytest.approx(0.14 / 2)  # squared deviations 0.14, / (E - 1)
    assert float(importance_loss(gates)) == pytest.approx(0.14 / 3)  # gmnn's default: / E
    torch.testing.assert_close(importance_loss(gates, "unbiased"), reference_loss_importance(gates, 1.0))


def test_the_model_adds_the_unbiased_importance_term() -> None:
    model = _hand_set(DenseMoE(regularizers={"importance": 0.2}, importance_std="unbiased", **SMALL)).train()
    terms = model.loss_terms(model(X), X, Y)
    # importance A + B = [0.7, 0.6, 0.7]: squared deviations 2/900 + 4/900 + 1/900... = 0.006667, / 2, / (2/3)^2
    assert float(terms["importance"].detach()) == pytest.approx(0.2 * 0.0075, abs=1e-7)
    torch.testing.assert_close(terms["importance"], reference_loss_importance(GATES, 0.2))


def test_bad_importance_std_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="importance_std"):
        DenseMoE(importance_std="sample", **SMALL)


# ------------------------------------------------------------- top-1 training
def reference_stochastic_loss(gates: torch.Tensor, experts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """helper/moe_models.py stochastic_loss: mean of -log(sum_i g_i exp(-L_i / 2) + 1e-15), L_i every expert's NLL."""
    losses = -torch.log(experts[torch.arange(len(y)), :, y] + 1e-15)  # [B, E]
    return torch.mean(-torch.log((gates * torch.exp(-0.5 * losses)).sum(1) + 1e-15))


def _top1(train_experts: str) -> TopKMoE:
    return _hand_set(TopKMoE(k=1, gate_gradient="stochastic", train_experts=train_experts, **SMALL)).train()


def test_train_experts_all_trains_on_the_references_stochastic_loss() -> None:
    model = _top1("all")
    terms = model.loss_terms(model(X), X, Y)
    assert set(terms) == {"nll"}
    expected = reference_stochastic_loss(GATES, EXPERTS.expand(2, -1, -1), Y)
    # by hand: exp(-L/2) = sqrt(p(y)); A: 0.5 sqrt(0.9) + 0.3 sqrt(0.2) + 0.2 sqrt(0.5), B likewise with p(1)
    a = 0.5 * math.sqrt(0.9) + 0.3 * math.sqrt(0.2) + 0.2 * math.sqrt(0.5)
    b = 0.2 * math.sqrt(0.1) + 0.3 * math.sqrt(0.8) + 0.5 * math.sqrt(0.5)
    assert float(expected) == pytest.approx(-(math.log(a) + math.log(b)) / 2, abs=1e-6)
    torch.testing.assert_close(terms["nll"], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("train_experts", "unrouted_trained"), [("all", True), ("routed", False)])
def test_only_train_experts_all_trains_the_expert_no_sample_is_routed_to(train_experts: str, unrouted_trained: bool) -> None:
    model = _top1(train_experts)
    out = model(X)
    assert out.selected[:, 0].tolist() == [0, 2]  # expert 1 is routed nothing
    torch.stack(list(model.loss_terms(out, X, Y).values())).sum().backward()
    grad = model.experts.experts[1].head.bias.grad
    assert (grad is not None and float(grad.abs().sum()) > 1e-4) == unrouted_trained


def test_train_experts_all_predicts_with_the_routed_expert() -> None:
    model = _top1("all").eval()
    torch.testing.assert_close(model(X).log_probs.exp(), EXPERTS[[0, 2]], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(gate_gradient="residual", train_experts="all"), "train_experts"),
    (dict(gate_gradient="stochastic", train_experts="some"), "train_experts"),
])
def test_bad_train_experts_names_the_parameter(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TopKMoE(k=1, **kwargs, **SMALL)


# ------------------------------------------------------------ attention query
def test_query_activation_none_feeds_the_pre_relu_hidden_layer_to_the_query() -> None:
    torch.manual_seed(0)
    model = AttentionGateMoE(query_activation="none", attention_dim=4, input_shape=[2], num_classes=2, num_experts=3,
                             expert_hidden=[3], gate_hidden=[5])
    x = torch.randn(6, 2)
    hidden_gate = model.gate.body[0](x)  # fc, no ReLU (the reference's gate_attn_layers: fc2(t))
    assert (hidden_gate < 0).any()
    _, hidden_experts = model.experts(x)
    # helper/moe_models.py attention: Q = Wq h_gate, K = Wk h_experts, scores Q K^T / sqrt(d)
    q, k = model.attention.query(hidden_gate), model.attention.key(hidden_experts)
    expected = torch.einsum("bd,bed->be", q, k) / math.sqrt(4)
    torch.testing.assert_close(model.gate_logits(x, hidden_experts), expected)
    relu = AttentionGateMoE(attention_dim=4, input_shape=[2], num_classes=2, num_experts=3, expert_hidden=[3], gate_hidden=[5])
    relu.load_state_dict(model.state_dict())
    assert not torch.allclose(relu.gate_logits(x, hidden_experts), expected)  # the default keeps gmnn's ReLU


def test_query_activation_none_drops_only_the_conv_gates_last_relu() -> None:
    model = AttentionGateMoE(query_activation="none", input_shape=[1, 28, 28], num_classes=10, num_experts=5,
                             expert="conv", expert_hidden=[5, 32], gate="conv", gate_hidden=[128, 32])
    body = model.gate.mlp.body
    assert [type(m).__name__ for m in body] == ["Linear", "ReLU", "Linear", "Identity"]
    assert type(model.gate.features[1]) is torch.nn.ReLU


def test_bad_query_activation_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="query_activation"):
        AttentionGateMoE(query_activation="tanh", **SMALL)


# ------------------------------------------------------------ expert-loss gate
PREDICTED = torch.tensor([[0.2, 1.0, 2.0], [3.0, 0.5, 0.1]])  # the gate's predicted losses l on A and B


def _loss_gate(**kwargs) -> ExpertLossGateMoE:
    model = ExpertLossGateMoE(**kwargs, **SMALL)
    with torch.no_grad():
        body, head = model.gate.body[0], model.gate.head
        body.weight.copy_(torch.eye(2)), body.bias.zero_()
        head.weight.copy_(PREDICTED.T), head.bias.zero_()
        for expert, probs in zip(model.experts.experts, EXPERTS):
            expert.head.weight.zero_()
            expert.head.bias.copy_(probs.log())
    return model.train()


def reference_expert_entropy_loss(gate_outputs: torch.Tensor, experts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """helper/moe_models.py expert_entropy_loss: sum over experts of the batch mean of |g_i - log(p_i(y) + 1e-15)|."""
    e_logp = torch.log(experts[torch.arange(len(y)), :, y] + 1e-15)
    return torch.sum(torch.mean(torch.abs(gate_outputs - e_logp), dim=0))


def test_l1_sum_gate_loss_is_the_references_expert_entropy_loss() -> None:
    model = _loss_gate(gate_loss="l1_sum", train_experts="argmax")
    terms = model.loss_terms(model(X), X, Y)
    # the reference's gate outputs g = log p estimates, gmnn's l = -g; A: L = -log [0.9, 0.2, 0.5], B: -log [0.1, 0.8, 0.5]
    hand_a = abs(0.2 + math.log(0.9)) + abs(1.0 + math.log(0.2)) + abs(2.0 + math.log(0.5))
    hand_b = abs(3.0 + math.log(0.1)) + abs(0.5 + math.log(0.8)) + abs(0.1 + math.log(0.5))
    assert float(terms["loss_prediction"].detach()) == pytest.approx((hand_a + hand_b) / 2, abs=1e-5)
    expected = reference_expert_entropy_loss(-PREDICTED, EXPERTS.expand(2, -1, -1), Y)
    torch.testing.assert_close(terms["loss_prediction"], expected, atol=1e-5, rtol=0)


def test_argmax_expert_training_trains_only_the_lowest_predicted_loss_expert() -> None:
    model = _loss_gate(gate_loss="l1_sum", train_experts="argmax")
    out = model(X)
    assert out.selected[:, 0].tolist() == [0, 2]  # argmin of the predicted losses
    terms = model.loss_terms(out, X, Y)
    # the reference's cross_entropy_loss of the selected expert's output: A expert 0 p(0) = 0.9, B expert 2 p(1) = 0.5
    assert float(terms["nll"].detach()) == pytest.approx(-(math.log(0.9) + math.log(0.5)) / 2, abs=1e-6)
    terms["nll"].backward()
    grads = [e.head.bias.grad for e in model.experts.experts]
    assert grads[1] is None or float(grads[1].abs().sum()) == 0.0
    assert float(grads[0].abs().sum()) > 0 and float(grads[2].abs().sum()) > 0


def test_sampled_expert_training_samples_from_softmin_of_the_predicted_losses_at_inference_too() -> None:
    model = _loss_gate(train_experts="sampled").eval()
    torch.manual_seed(0)
    x = X[:1].expand(4000, -1)
    frequencies = torch.bincount(model(x).selected[:, 0], minlength=3).float() / 4000
    torch.testing.assert_close(frequencies, torch.softmax(-PREDICTED[0], dim=0), atol=0.03, rtol=0)


def test_the_default_expert_loss_gate_is_unchanged() -> None:
    model = _loss_gate()
    terms = model.loss_terms(model(X), X, Y)
    losses = -torch.log(EXPERTS[:, [0, 1]].T)  # [B, E]: A's y = 0, B's y = 1
    torch.testing.assert_close(terms["loss_prediction"], F.mse_loss(PREDICTED, losses))


@pytest.mark.parametrize("kwargs", [dict(gate_loss="l2"), dict(train_experts="all")], ids=["gate_loss", "train_experts"])
def test_bad_expert_loss_gate_options_name_the_parameter(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ExpertLossGateMoE(**kwargs, **SMALL)
