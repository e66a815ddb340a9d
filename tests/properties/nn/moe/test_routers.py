"""Properties of the routers (:mod:`gmnn.nn.moe.routers`): for any router logits, extreme ones included, the
routing record holds what each router's docstring promises: which experts are picked and how the combine
weights sum (token choice renormalised or not, expert choice, Soft MoE)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st

from gmnn.nn.moe.routers import ExpertChoiceRouter, NoisyTopKRouter, SigmoidRouter, SoftmaxTopKRouter, SoftMoERouter
from tests.properties.strategies import logits

FAST = settings(max_examples=60, deadline=None)
ATOL = 1e-5  # routing runs in float32
TOKEN_CHOICE = {"softmax": SoftmaxTopKRouter, "noisy": NoisyTopKRouter, "sigmoid": SigmoidRouter}


def _route_logits(router, router_logits: torch.Tensor) -> torch.Tensor:
    """Inputs ``x [T, T]`` (one-hot tokens) for which ``router``'s logits are ``router_logits [T, E]``."""
    tokens = router_logits.shape[0]
    with torch.no_grad():
        router.weight.copy_(router_logits.t())
    return torch.eye(tokens)


@st.composite
def token_choice(draw: st.DrawFn) -> dict:
    """A token-choice router's arguments (k, normalize, scale, groups, aux-loss-free balancing) and its logits."""
    experts = draw(st.integers(1, 6))
    num_groups = draw(st.sampled_from([g for g in range(1, experts + 1) if experts % g == 0]))
    topk_groups = draw(st.integers(1, num_groups))
    k = draw(st.integers(1, topk_groups * (experts // num_groups)))
    tokens = draw(st.integers(1, 5))
    return dict(
        kind=draw(st.sampled_from(sorted(TOKEN_CHOICE))), experts=experts, k=k, tokens=tokens,
        normalize=draw(st.sampled_from([None, True, False])), scale=draw(st.sampled_from([1.0, 2.5])),
        num_groups=num_groups, topk_groups=topk_groups, balance_rate=draw(st.sampled_from([0.0, 0.1])),
        training=draw(st.booleans()), logits=draw(logits((tokens, experts), torch.float32)),
        mask=draw(st.none() | st.lists(st.booleans(), min_size=tokens, max_size=tokens)),
        bias=draw(logits((experts,), torch.float32)),
    )


# Logits reach -1e30, where float32's sigmoid and softmax are exactly 0. More examples: group-limited cases (E with a divisor > 1, topk_groups < num_groups) are a minority.
UNDERFLOWED_SIGMOID = {  # every sigmoid score 0 in float32: top-k breaks ties the log-space weights do not follow
    "kind": "sigmoid", "experts": 4, "k": 3, "tokens": 1, "normalize": None, "scale": 1.0, "num_groups": 1,
    "topk_groups": 1, "balance_rate": 0.0, "training": False,
    "logits": torch.tensor([[-1.0e6, -1.0e30, -1.0e30, -1.0e30]]), "mask": None, "bias": torch.zeros(4),
}


@settings(max_examples=200, deadline=None)
@given(token_choice())
@example(UNDERFLOWED_SIGMOID)
def test_token_choice_picks_k_experts_and_weights_them_as_documented(case: dict) -> None:
    """Every token gets k distinct experts, sorted by decreasing weight, within its ``topk_groups`` best groups.
    The weights are the picked scores (softmax, or sigmoid for :class:`SigmoidRouter`) times ``scale``; renormalised
    (``normalize``, default ``k > 1``) they sum to ``scale``. Without noise, bias or groups the picked experts are the
    k most probable. ``probs`` sum to 1; padding tokens get weight 0."""
    router = TOKEN_CHOICE[case["kind"]](case["tokens"], case["experts"], case["k"], normalize=case["normalize"],
                                        scale=case["scale"], num_groups=case["num_groups"],
                                        topk_groups=case["topk_groups"], balance_rate=case["balance_rate"],
                                        balance_update="manual")
    router.train(case["training"])
    if case["balance_rate"]:
        router.selection_bias.copy_(case["bias"].clamp(-10, 10))
    mask = None if case["mask"] is None else torch.tensor(case["mask"])
    routing = router(_route_logits(router, case["logits"]), mask).routing
    tokens, k, experts = case["tokens"], case["k"], case["experts"]
    probs, selected, weights = routing.probs, routing.selected, routing.weights
    noisy = case["training"] and case["kind"] == "noisy"
    scores = torch.sigmoid(case["logits"]) if case["kind"] == "sigmoid" else torch.softmax(case["logits"], -1)
    picked = scores.gather(-1, selected)
    normalize = k > 1 if case["normalize"] is None else case["normalize"]

    assert selected.shape == weights.shape == (tokens, k) and probs.shape == (tokens, experts)
    torch.testing.assert_close(probs.sum(-1), torch.ones(tokens), atol=ATOL, rtol=0)
    assert ((selected >= 0) & (selected < experts)).all()
    assert all(len(set(row)) == k for row in selected.tolist()), "an expert picked twice by one token"
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    assert (weights[:, :-1] >= weights[:, 1:]).all(), "selected must be sorted by decreasing weight"
    groups_used = (selected // (experts // case["num_groups"])).tolist()
    assert all(len(set(row)) <= case["topk_groups"] for row in groups_used)

    keep = torch.ones(tokens, dtype=torch.bool) if mask is None else mask
    if normalize:
        expected_sum = torch.full((tokens,), case["scale"])
        torch.testing.assert_close(weights.sum(-1)[keep], expected_sum[keep], atol=ATOL * case["scale"], rtol=0)
    elif not noisy:
        torch.testing.assert_close(weights[keep], (picked * case["scale"])[keep], atol=ATOL, rtol=ATOL)
    else:
        assert (weights.sum(-1) <= case["scale"] * (1 + ATOL)).all()
    if mask is not None:
        assert (weights[~mask] == 0).all(), "padding tokens must get no weight"
    if not noisy and not case["balance_rate"] and case["num_groups"] == 1 and k < experts:
        unpicked = scores.scatter(-1, selected, -1.0).max(-1).values
        assert (picked.min(-1).values >= unpicked).all(), "the k best experts must be picked"


@FAST
@given(st.sampled_from([(4, 2), (6, 2), (6, 3)]), st.data())
def test_group_limited_routing_keeps_every_token_within_its_best_groups(sizes: tuple[int, int], data: st.DataObject) -> None:
    """With ``num_groups`` groups and ``topk_groups`` < ``num_groups``, every token's k experts lie in at most
    ``topk_groups`` groups, and in the groups of highest score (the sum of a group's two best probabilities)."""
    experts, num_groups = sizes
    size = experts // num_groups
    topk_groups = data.draw(st.integers(1, num_groups - 1), label="topk_groups")
    k = data.draw(st.integers(1, topk_groups * size), label="k")
    router_logits = data.draw(logits((4, experts), torch.float32), label="logits")
    router = SigmoidRouter(4, experts, k, num_groups=num_groups, topk_groups=topk_groups) if data.draw(
        st.booleans(), label="sigmoid") else SoftmaxTopKRouter(4, experts, k, num_groups=num_groups, topk_groups=topk_groups)
    routing = router(_route_logits(router, router_logits)).routing
    scores = torch.sigmoid(router_logits) if isinstance(router, SigmoidRouter) else torch.softmax(router_logits, -1)
    group_score = scores.view(4, num_groups, size).topk(min(2, size), -1).values.sum(-1)
    for token, row in enumerate(routing.selected.tolist()):
        groups = {e // size for e in row}
        assert len(groups) <= topk_groups
        cutoff = group_score[token].topk(topk_groups).values.min()
        assert all(group_score[token, g] >= cutoff for g in groups), "an expert picked outside the best groups"


def test_renormalised_weights_of_experts_picked_by_the_bias_at_probability_0_are_finite() -> None:
    """Found by the property above: aux-loss-free balancing (``balance_rate > 0``) whose bias makes a token pick an
    expert whose softmax probability is exactly 0 in float32 (logit gap above ~104), with renormalised weights: the
    weight is the ratio taken in log space (1 for k = 1), not 0 / 0, and its gradient is finite."""
    router = SoftmaxTopKRouter(1, 2, k=1, normalize=True, balance_rate=0.1, balance_update="manual")
    router.selection_bias.copy_(torch.tensor([-10.0, 0.0]))
    x = _route_logits(router, torch.tensor([[100.0, -80.0]])).requires_grad_()
    routing = router(x).routing
    assert routing.selected.tolist() == [[1]]
    assert routing.weights.tolist() == [[1.0]]
    routing.weights.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(router.weight.grad).all()


@pytest.mark.parametrize("k", [1, 2])
def test_sigmoid_router_with_every_score_underflowing_gives_finite_probabilities_and_weights(k: int) -> None:
    """Found by the property above: router logits of -200 for every expert (sigmoid exactly 0 in float32) give
    ``probs = softmax(logsigmoid(logits))``, the exact normalised sigmoid, and for k > 1 renormalised weights equal
    to the softmax of the picked logsigmoids, with finite gradients."""
    router = SigmoidRouter(2, 3, k=k)
    router_logits = torch.tensor([[-200.0, -201.0, -202.0], [0.0, 1.0, 2.0]])
    x = _route_logits(router, router_logits).requires_grad_()
    routing = router(x).routing
    torch.testing.assert_close(routing.probs, torch.softmax(F.logsigmoid(router_logits), -1))
    expected = torch.softmax(F.logsigmoid(router_logits).gather(-1, routing.selected), -1) if k > 1 else \
        torch.sigmoid(router_logits).gather(-1, routing.selected)
    torch.testing.assert_close(routing.weights, expected)
    (routing.weights.sum() + routing.probs[:, 0].sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(router.weight.grad).all()


@st.composite
def expert_choice(draw: st.DrawFn) -> dict:
    """An expert-choice router's experts, capacity factor, logits and optional padding mask."""
    experts, tokens = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    return dict(experts=experts, tokens=tokens, capacity_factor=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 4.0])),
                logits=draw(logits((tokens, experts), torch.float32)),
                mask=draw(st.none() | st.lists(st.booleans(), min_size=tokens, max_size=tokens)))


@FAST
@given(expert_choice())
def test_expert_choice_each_expert_takes_its_best_tokens_weighted_by_their_probability(case: dict) -> None:
    """Every expert takes ``c = capacity(T)`` distinct tokens, the ones of highest probability for it (padding
    last, with weight 0); a token's weights are the probabilities of the experts that took it, sorted, so they sum
    to at most 1, ``selected`` is -1 exactly at empty slots, and all weights together equal the experts' gates."""
    router = ExpertChoiceRouter(case["tokens"], case["experts"], capacity_factor=case["capacity_factor"])
    mask = None if case["mask"] is None else torch.tensor(case["mask"])
    route = router(_route_logits(router, case["logits"]), mask)
    routing, tokens, experts = route.routing, case["tokens"], case["experts"]
    probs = torch.softmax(case["logits"], -1)
    capacity = router.capacity(tokens)
    assert capacity == max(1, min(tokens, math.ceil(case["capacity_factor"] * tokens / experts)))
    torch.testing.assert_close(routing.probs, probs, atol=ATOL, rtol=0)
    assert route.expert_tokens.shape == route.expert_gates.shape == (experts, capacity)
    assert all(len(set(row)) == capacity for row in route.expert_tokens.tolist()), "a token taken twice by one expert"
    keep = torch.ones(tokens, dtype=torch.bool) if mask is None else mask
    taken_kept = keep[route.expert_tokens]
    expected_gates = probs.t().gather(1, route.expert_tokens) * taken_kept
    torch.testing.assert_close(route.expert_gates, expected_gates, atol=ATOL, rtol=0)
    for e in range(experts):  # the best kept tokens first: no kept token left out beats one taken
        column = probs[:, e].masked_fill(~keep, -1.0)
        left_out = torch.ones(tokens, dtype=torch.bool)
        left_out[route.expert_tokens[e]] = False
        if left_out.any() and taken_kept[e].any():
            assert column[route.expert_tokens[e]][taken_kept[e]].min() >= column[left_out].max()
        if left_out.any() and (~taken_kept[e]).any():  # a padding token taken: no kept token was left out
            assert not (keep & left_out).any()
    weights, selected = routing.weights, routing.selected
    assert (weights >= 0).all() and (weights.sum(-1) <= 1 + ATOL).all()
    assert (weights[:, :-1] >= weights[:, 1:]).all()
    assert (weights[selected == -1] == 0).all()
    assert ((selected >= 0).sum(-1) == route.expert_tokens[taken_kept].bincount(minlength=tokens)).all()
    torch.testing.assert_close(weights.sum(), route.expert_gates.sum(), atol=ATOL * experts * capacity, rtol=0)
    if mask is not None:
        assert (weights[~mask] == 0).all()


@st.composite
def soft_moe(draw: st.DrawFn) -> dict:
    """A Soft MoE router's sizes (sequences, their length, experts, slots), normalisation and padding mask."""
    sequences, seq_len = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    tokens = sequences * seq_len
    return dict(sequences=sequences, seq_len=seq_len, experts=draw(st.integers(1, 4)), slots=draw(st.integers(1, 3)),
                normalize=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
                x=draw(logits((tokens, 3), torch.float32)).clamp(-1e4, 1e4),
                mask=draw(st.none() | st.lists(st.booleans(), min_size=tokens, max_size=tokens)))


@FAST
@given(soft_moe())
def test_soft_moe_dispatch_and_combine_are_softmaxes_over_tokens_and_slots(case: dict) -> None:
    """Combine weights sum to 1 over the E * S slots of every (kept) token; dispatch weights sum to 1 over the
    kept tokens of each sequence for every slot; padding gets neither; ``probs`` (combine per expert) sum to 1."""
    torch.manual_seed(case["seed"])
    router = SoftMoERouter(3, case["experts"], slots=case["slots"], normalize=case["normalize"])
    mask = None if case["mask"] is None else torch.tensor(case["mask"])
    route = router(case["x"], mask, seq_len=case["seq_len"])
    b, n, slots = case["sequences"], case["seq_len"], case["experts"] * case["slots"]
    keep = (torch.ones(b * n, dtype=torch.bool) if mask is None else mask).view(b, n)
    assert route.dispatch.shape == route.combine.shape == (b, n, slots)
    assert torch.isfinite(route.dispatch).all() and torch.isfinite(route.combine).all()
    torch.testing.assert_close(route.combine.sum(-1), keep.float(), atol=ATOL, rtol=0)
    has_tokens = keep.any(-1, keepdim=True).float().expand(b, slots)
    torch.testing.assert_close(route.dispatch.sum(1), has_tokens, atol=ATOL, rtol=0)
    assert (route.dispatch[~keep] == 0).all() and (route.combine[~keep] == 0).all()
    torch.testing.assert_close(route.routing.probs.sum(-1), keep.flatten().float(), atol=ATOL, rtol=0)
