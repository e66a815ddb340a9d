"""DeepSeek-style routing and balancing, and the top-1 read of unsorted routings, checked against hand computations."""

import math

import pytest
import torch

from gmnn.nn import MLPExperts, MoELayer, Routing, SigmoidRouter, SoftmaxTopKRouter
from gmnn.nn.functional.regularizers import sequence_balance_loss


def _fixed(router, logits: list[float]):
    """Make the router's logits ``logits`` for every token (zero weight, the logits as bias)."""
    with torch.no_grad():
        router.weight.zero_()
        router.bias.copy_(torch.tensor(logits))
    return router


def test_device_limited_groups_score_their_best_expert_node_limited_their_two_best() -> None:
    probs = [0.30, 0.05, 0.25, 0.20, 0.10, 0.10]  # groups of 2: {0,1} {2,3} {4,5}
    logits = [math.log(p) for p in probs]
    x = torch.zeros(1, 4)
    kwargs = {"k": 2, "normalize": False, "bias": True, "num_groups": 3, "topk_groups": 1}
    device = _fixed(SoftmaxTopKRouter(4, 6, group_score="max", **kwargs), logits)(x).routing
    node = _fixed(SoftmaxTopKRouter(4, 6, group_score="top2", **kwargs), logits)(x).routing
    # best expert: group {0,1} 0.30 beats {2,3} 0.25; two best: {2,3} 0.45 beats {0,1} 0.35
    assert device.selected.tolist() == [[0, 1]] and node.selected.tolist() == [[2, 3]]
    torch.testing.assert_close(device.weights, torch.tensor([[0.30, 0.05]]))
    scaled = _fixed(SoftmaxTopKRouter(4, 6, group_score="max", scale=2.0, **kwargs), logits)(x).routing
    torch.testing.assert_close(scaled.weights, torch.tensor([[0.60, 0.10]]))


def test_score_bias_moves_the_selection_not_the_weights() -> None:
    router = _fixed(SigmoidRouter(4, 4, k=2, normalize=False, bias=True, score_bias=True), [2.0, 1.0, 0.0, -1.0])
    assert "selection_bias" in router.state_dict()
    router.selection_bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))  # scores + bias: .88 .73 3.5 .27
    routing = router(torch.zeros(1, 4)).routing
    assert routing.selected.tolist() == [[0, 2]]  # by weight: sigmoid(2) = .881 before sigmoid(0) = .5
    torch.testing.assert_close(routing.weights, torch.tensor([[1 / (1 + math.exp(-2)), 0.5]]))
    assert router.balance_rate == 0 and not hasattr(router, "load")  # a fixed bias: no balancing updates


def test_norm_min_bounds_the_normaliser() -> None:
    logits = [math.log(p) for p in (0.4, 0.3, 0.3)]
    router = _fixed(SoftmaxTopKRouter(2, 3, k=1, normalize=True, bias=True, norm_min=0.5), logits)
    torch.testing.assert_close(router(torch.zeros(1, 2)).routing.weights, torch.tensor([[0.8]]))  # 0.4 / max(0.4, 0.5)
    router.norm_min = 0.1
    torch.testing.assert_close(router(torch.zeros(1, 2)).routing.weights, torch.tensor([[1.0]]))


def test_sequence_balance_loss_by_hand() -> None:
    probs = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1]]])
    selected = torch.tensor([[[0], [1]]])
    # f = E / (k T) * counts = 4 / 2 * [1, 1, 0, 0]; P = [0.4, 0.35, 0.15, 0.1]; sum f P = 0.8 + 0.7
    torch.testing.assert_close(sequence_balance_loss(probs, selected), torch.tensor(1.5))
    # a second sequence of one counted token (the other is padding): f = 4 * [0, 0, 1, 0], P = [.1, .1, .7, .1]
    probs2 = torch.cat([probs, torch.tensor([[[0.1, 0.1, 0.7, 0.1], [0.25] * 4]])])
    selected2 = torch.cat([selected, torch.tensor([[[2], [3]]])])
    mask = torch.tensor([[True, True], [True, False]])
    torch.testing.assert_close(sequence_balance_loss(probs2, selected2, mask), torch.tensor((1.5 + 2.8) / 2))
    uniform = torch.full((1, 4, 4), 0.25)
    assert sequence_balance_loss(uniform, torch.arange(4).view(1, 4, 1)).item() == pytest.approx(1.0)


def test_layer_adds_the_sequence_balance_term_per_sequence() -> None:
    torch.manual_seed(0)
    router = SigmoidRouter(8, 4, k=2)
    layer = MoELayer(router=router, experts=MLPExperts(8, 6, 4), balance_weight=0.0, z_weight=0.0,
                     sequence_balance_weight=0.1)
    x = torch.randn(3, 5, 8)
    _, aux, routing = layer(x, return_routing=True)
    expected = sequence_balance_loss(routing.probs.view(3, 5, 4), routing.selected.view(3, 5, 2))
    torch.testing.assert_close(layer.last_losses["sequence_balance"], expected.detach())
    torch.testing.assert_close(aux, 0.1 * expected)
    aux.backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def test_top1_is_the_highest_weight_expert_whatever_its_slot() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    selected = torch.tensor([[1, 3, 2], [2, 0, -1], [-1, -1, -1]])
    weights = torch.tensor([[0.2, 0.5, 0.3], [0.4, 0.6, 0.0], [0.0, 0.0, 0.0]])
    assert Routing(probs, selected, weights).top1.tolist() == [3, 0, 0]
    assert Routing(probs, selected).top1.tolist() == [3, 0, 0]  # without weights: ranked by probs


def test_top1_of_an_unsorted_topk_router_is_its_argmax() -> None:
    logits = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits, -1)
    weights, selected = probs.topk(4, dim=-1)
    order = torch.rand(2000, 4, generator=torch.Generator().manual_seed(1)).argsort(-1)  # slots in any order,
    weights, selected = weights.gather(-1, order), selected.gather(-1, order)  # as DeepSeek's topk(sorted=False)
    assert (selected[:, 0] != probs.argmax(-1)).float().mean() > 0.5  # the first slot is often not the best
    assert torch.equal(Routing(probs, selected, weights).top1, probs.argmax(-1))
    assert torch.equal(Routing(probs, selected).top1, probs.argmax(-1))


def test_analysis_reads_the_top1_of_a_deepseek_v3_router_by_weight() -> None:
    transformers = pytest.importorskip("transformers")
    from gmnn.analysis import routing_from_output
    from tests.nn.hf_blocks import make

    block = make("DeepSeek-V3")
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    output = block.gate(x)
    _, weights, indices = output
    routing = routing_from_output(block.gate, output, 8, 3)
    assert torch.equal(routing.top1, indices.gather(-1, weights.argmax(-1, keepdim=True)).squeeze(-1))
    assert transformers is not None
