"""The paper's specialization methods at token level, by hand: pair-sampled sample similarity,
the attention router, router / dual temperature, hard-EM assignment of a layer's tokens."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gmnn.nn import AttentionRouter, MLPExperts, MoELayer, TemperatureSoftmaxRouter
from gmnn.nn.functional import pair_similarity_terms, sample_distances, sample_similarity_terms, sample_token_pairs


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


# --- (a) sample similarity over sampled pairs


def test_pair_similarity_by_hand() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], requires_grad=True)
    x = torch.tensor([[0.0], [3.0], [4.0]], requires_grad=True)
    first, second = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])
    # distances 3, 4, 1 over their maximum 4: 0.75, 1, 0.25; sum_e g_i g_j: 0, 0.5, 0.5; sum_{e != f}: 1, 0.5, 0.5
    same, different = pair_similarity_terms(g, x, first, second)
    assert same.item() == pytest.approx((0 * 0.75 + 0.5 * 1 + 0.5 * 0.25) / 3 / 2)
    assert different.item() == pytest.approx((1 * 0.75 + 0.5 * 1 + 0.5 * 0.25) / 3 / (4 - 2))
    (same - different).backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
    assert x.grad is None  # the distances are constants


def test_pair_similarity_cosine_and_weights_by_hand() -> None:
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    first, second = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])
    # 1 - cos: 1, 2, 1 -> 0.5, 1, 0.5; the second pair weighs 0: means over pairs 1 and 3, max over them (1)
    same, different = pair_similarity_terms(g, x, first, second, "cosine", weight=torch.tensor([True, False, True]))
    assert same.item() == pytest.approx((1 * 1 + 0 * 1) / 2 / 2)
    assert different.item() == pytest.approx((0 * 1 + 1 * 1) / 2 / 2)


def test_all_pairs_equal_the_sample_level_terms() -> None:
    torch.manual_seed(0)
    g = torch.softmax(torch.randn(6, 3), -1)
    x = torch.randn(6, 5)
    first, second = torch.cartesian_prod(torch.arange(6), torch.arange(6)).unbind(-1)
    for metric in ("euclidean", "cosine"):
        same, different = pair_similarity_terms(g, x, first, second, metric)
        full_same, full_different = sample_similarity_terms(g, sample_distances(x, metric))
        assert same.item() * 36 == pytest.approx(full_same.item(), rel=1e-5)
        assert different.item() == pytest.approx(full_different.item(), rel=1e-5)


def test_sample_token_pairs() -> None:
    first, second = sample_token_pairs(10, 500, generator=torch.Generator().manual_seed(0))
    assert first.shape == second.shape == (500,) and first.dtype == torch.int64
    assert 0 <= int(first.min()) and int(first.max()) <= 9 and len(set(first.tolist())) == 10
    with pytest.raises(ValueError, match="pairs"):
        sample_token_pairs(10, 0)


def test_layer_similarity_loss_terms_weights_and_gradients() -> None:
    torch.manual_seed(0)
    layer = MoELayer(8, 16, 4, k=2, balance_weight=0.0, z_weight=0.0, similarity_same_weight=2.0,
                     similarity_different_weight=3.0, similarity_pairs=64)
    x = torch.randn(2, 10, 8)
    _, aux = layer(x)
    terms = layer.last_losses
    assert set(terms) == {"similarity_same", "similarity_different"} and terms["similarity_different"] < 0
    assert aux.item() == pytest.approx(2.0 * terms["similarity_same"].item() + 3.0 * terms["similarity_different"].item())
    aux.backward()
    assert layer.router.weight.grad.abs().sum() > 0
    assert layer.experts.w1.grad is None or layer.experts.w1.grad.abs().sum() == 0  # the loss is on the router


def test_layer_similarity_memory_is_bounded_by_the_pairs() -> None:
    """At T = 4096 tokens no operation makes a tensor of T^2 (16.8M) elements, or anything near it."""
    tokens, pairs = 4096, 256
    layer = MoELayer(8, 16, 4, k=2, similarity_same_weight=1.0, similarity_different_weight=1.0, similarity_pairs=pairs)
    x = torch.randn(tokens, 8)
    with LargestTensor() as probe:
        out, aux = layer(x)
        (out.sum() + aux).backward()
    assert probe.largest <= tokens * 16 * 2  # the experts' hidden rows dominate; T * T is 256 times larger
    assert probe.largest < tokens * tokens // 100


def test_layer_similarity_ignores_padding() -> None:
    torch.manual_seed(0)
    layer = MoELayer(4, 8, 2, k=1, similarity_same_weight=1.0, similarity_pairs=2000)
    x = torch.randn(1, 6, 4)
    mask = torch.tensor([[True, True, True, False, False, False]])
    x_changed = x.clone()
    x_changed[0, 3:] = 100.0  # padding far away: would dominate the distances if it counted
    torch.manual_seed(1)
    layer(x, mask=mask)
    first = layer.last_losses["similarity_same"]
    torch.manual_seed(1)
    layer(x_changed, mask=mask)
    assert torch.allclose(layer.last_losses["similarity_same"], first)


# --- (b) attention router


def test_attention_router_learned_keys_by_hand() -> None:
    router = AttentionRouter(2, 3, k=1, attention_dim=2, keys="learned")
    with torch.no_grad():
        router.query.weight.copy_(torch.eye(2))
        router.key.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    x = torch.tensor([[1.0, 2.0]])
    routing = router(x).routing
    expected = torch.tensor([[1.0, 2.0, 3.0]]) / math.sqrt(2)
    assert torch.allclose(routing.logits, expected)
    assert routing.selected.tolist() == [[2]]
    assert routing.weights.item() == pytest.approx(torch.softmax(expected, -1)[0, 2].item())  # k = 1: not renormalised


def test_attention_router_expert_hidden_keys_by_hand() -> None:
    experts = MLPExperts(1, 2, 2, activation="relu", bias=False)
    with torch.no_grad():
        experts.w1.copy_(torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]]))  # h_0(x) = relu(x, 0), h_1(x) = relu(0, x)
    router = AttentionRouter(1, 2, k=1, attention_dim=1, keys="expert_hidden", expert_hidden=2)
    with torch.no_grad():
        router.query.weight.fill_(1.0)  # q = x
        router.key_projection.weight.copy_(torch.tensor([[1.0, 3.0]]))  # k_e = h_e1 + 3 h_e2
    layer = MoELayer(router=router, experts=experts, balance_weight=0.0, z_weight=0.0)
    x = torch.tensor([[2.0]])
    _, _, routing = layer(x, return_routing=True)
    # h_0 = (2, 0), h_1 = (0, 2): keys 2 and 6; q = 2: logits 4 and 12
    assert torch.allclose(routing.logits, torch.tensor([[4.0, 12.0]]))
    assert "experts" not in dict(router.named_children()) and not any("w1" in n for n in router.state_dict())


def test_attention_router_gradients_reach_query_keys_and_expert_first_layers() -> None:
    torch.manual_seed(0)
    for keys, key_param in (("learned", "key"), ("expert_hidden", "key_projection.weight")):
        router = AttentionRouter(8, 4, k=2, keys=keys, expert_hidden=16, attention_dim=6)
        layer = MoELayer(router=router, experts=MLPExperts(8, 16, 4), balance_weight=0.0, z_weight=0.0)
        out, aux = layer(torch.randn(20, 8))
        out.square().sum().backward()
        params = dict(router.named_parameters())
        assert params["query.weight"].grad.abs().sum() > 0 and params[key_param].grad.abs().sum() > 0
        if keys == "expert_hidden":  # through the keys and through the routed experts
            w1 = layer.experts.w1.grad
            assert w1 is not None and (w1.abs().sum((1, 2)) > 0).all()


def test_attention_router_errors() -> None:
    with pytest.raises(ValueError, match="expert_hidden"):
        AttentionRouter(8, 4, keys="expert_hidden")
    with pytest.raises(ValueError, match="keys"):
        AttentionRouter(8, 4, keys="values")
    router = AttentionRouter(8, 4, keys="expert_hidden", expert_hidden=16)
    with pytest.raises(RuntimeError, match="no experts"):
        router(torch.randn(3, 8))
    with pytest.raises(ValueError, match="hidden"):
        MoELayer(router=router, experts=MLPExperts(8, 32, 4))


# --- (c) router temperature and dual temperature


def test_temperature_by_hand() -> None:
    router = TemperatureSoftmaxRouter(3, 3, k=2, temperature=2.0, bias=True).eval()
    logits = torch.log(torch.tensor([[1.0, 2.0, 4.0]]))
    scores, probs = router.scores(torch.zeros(1, 3), logits)
    expected = torch.tensor([[1.0, math.sqrt(2), 2.0]]) / (3 + math.sqrt(2))  # p ~ p0 ** (1 / T)
    assert torch.allclose(probs, expected) and torch.allclose(scores, expected)
    with torch.no_grad():  # logits = bias
        router.weight.zero_()
        router.bias.copy_(logits[0])
    routing = router(torch.zeros(1, 3)).routing
    assert routing.selected.tolist() == [[2, 1]]
    assert torch.allclose(routing.weights, torch.tensor([[2.0, math.sqrt(2)]]) / (2 + math.sqrt(2)))


def test_dual_temperature_value_flat_gradient_sharp_by_hand() -> None:
    """k = 1, not renormalised: the weight is the flat probability, its gradient the sharp one's."""
    logits0 = torch.log(torch.tensor([[1.0, 2.0, 4.0]]))
    dual = TemperatureSoftmaxRouter(3, 3, k=1, temperature=0.5, expert_temperature=4.0).train()
    sharp = TemperatureSoftmaxRouter(3, 3, k=1, temperature=0.5).train()
    weights = {}
    for name, router in (("dual", dual), ("sharp", sharp)):
        logits = logits0.clone().requires_grad_(True)
        scores, probs = router.scores(torch.zeros(1, 3), logits)
        scores[0, 2].backward()
        weights[name] = (scores[0, 2].item(), logits.grad.clone(), probs)
    flat = torch.tensor([1.0, 2 ** 0.25, 4 ** 0.25])
    assert weights["dual"][0] == pytest.approx((flat[2] / flat.sum()).item())  # softmax(logits / 4)
    sharp_p = torch.tensor([1.0, 4.0, 16.0]) / 21  # softmax(logits / 0.5)
    assert weights["sharp"][0] == pytest.approx(sharp_p[2].item())
    assert torch.allclose(weights["dual"][1], weights["sharp"][1])  # the router's gradient is the sharp gate's
    assert torch.allclose(weights["dual"][2], sharp_p.unsqueeze(0))  # the record keeps the router's probabilities
    dual.eval()
    scores, _ = dual.scores(torch.zeros(1, 3), logits0)
    assert torch.allclose(scores, sharp_p.unsqueeze(0))  # evaluation: the router's temperature alone


def test_dual_temperature_layer_gradients_reach_router_and_experts() -> None:
    torch.manual_seed(0)
    router = TemperatureSoftmaxRouter(8, 4, k=2, temperature=0.5, expert_temperature=3.0, bias=True)
    layer = MoELayer(router=router, experts=MLPExperts(8, 16, 4), balance_weight=0.0, z_weight=0.0)
    out, _ = layer(torch.randn(30, 8))
    out.square().sum().backward()
    assert router.weight.grad.abs().sum() > 0 and layer.experts.w1.grad.abs().sum() > 0


def test_set_temperature_and_checks() -> None:
    router = TemperatureSoftmaxRouter(4, 2, k=1, temperature=2.0, expert_temperature=5.0)
    router.set_temperature(temperature=1.5, expert_temperature=3.0)
    assert router.temperature.item() == 1.5 and router.expert_temperature.item() == 3.0
    assert set(router.state_dict()) >= {"temperature", "expert_temperature"}
    with pytest.raises(ValueError, match="dual"):
        TemperatureSoftmaxRouter(4, 2).set_temperature(expert_temperature=2.0)
    with pytest.raises(ValueError, match="temperature"):
        TemperatureSoftmaxRouter(4, 2, temperature=0.0)


# --- (d) hard-EM assignment of a layer's tokens


def test_assign_routes_the_next_call_by_hand() -> None:
    torch.manual_seed(0)
    layer = MoELayer(4, 8, 3, k=2, balance_weight=0.0, z_weight=0.0)
    x = torch.randn(5, 4)
    selected = torch.tensor([[2, 0], [1, 2], [0, 1], [2, 1], [1, 0]])
    weights = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75], [1.0, 0.0], [0.0, 1.0]])
    layer.assign(selected, weights)
    out, _, routing = layer(x, return_routing=True)
    expected = torch.stack([sum(w * layer.expert(int(e), x[t:t + 1])[0] for e, w in zip(selected[t], weights[t]))
                            for t in range(5)])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(routing.selected, selected) and routing.probs.requires_grad  # the router still ran
    routed = layer(x, return_routing=True)[2]  # one call only
    assert torch.equal(routed.selected, routed.probs.topk(2).indices)
    with pytest.raises(ValueError, match="k=2"):
        layer.assign(selected[:, :1], weights[:, :1])
