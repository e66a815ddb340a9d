import math

import pytest
import torch
import torch.distributed as dist

from gmnn.nn import ExpertChoiceRouter, MLPExperts, MoELayer, NoisyTopKRouter, SigmoidRouter, SoftmaxTopKRouter, SoftMoERouter


def _with_logits(router, logits: torch.Tensor) -> torch.Tensor:
    """Inputs ``x [T, d_model]`` for which the router's logits are ``logits [T, E]`` (needs T <= d_model)."""
    tokens = logits.shape[0]
    with torch.no_grad():
        router.weight.zero_()
        router.weight[:, :tokens] = logits.t()
    return torch.eye(tokens, router.d_model)


def test_softmax_top_k_weights_hand_computed_with_and_without_renormalising() -> None:
    logits = torch.tensor([[2.0, 0.0, 1.0, 0.0]])
    probs = torch.softmax(logits, -1)[0]
    for normalize, expected in [(True, probs[[0, 2]] / probs[[0, 2]].sum()), (False, probs[[0, 2]])]:
        router = SoftmaxTopKRouter(4, 4, k=2, normalize=normalize)
        x = _with_logits(router, logits)
        routing = router(x).routing
        assert routing.selected.tolist() == [[0, 2]]
        torch.testing.assert_close(routing.weights[0], expected)
    assert SoftmaxTopKRouter(4, 4, k=1).normalize is False and SoftmaxTopKRouter(4, 4, k=2).normalize is True


def test_sigmoid_group_limited_routing_skips_the_best_expert_of_a_weak_group() -> None:
    # groups {0, 1} and {2, 3}: expert 2 alone is the best, but group {0, 1} scores 1.5 + 1.4 > 2.0 + (-3)
    logits = torch.tensor([[1.5, 1.4, 2.0, -3.0]])
    free = SigmoidRouter(4, 4, k=2)
    limited = SigmoidRouter(4, 4, k=2, num_groups=2, topk_groups=1)
    x = _with_logits(free, logits)
    _with_logits(limited, logits)
    assert free(x).routing.selected.tolist() == [[2, 0]]
    routing = limited(x).routing
    assert routing.selected.tolist() == [[0, 1]]
    s = torch.sigmoid(logits[0, :2])
    torch.testing.assert_close(routing.weights[0], s / s.sum())
    torch.testing.assert_close(routing.probs[0], torch.sigmoid(logits[0]) / torch.sigmoid(logits[0]).sum())
    with pytest.raises(ValueError, match="num_groups"):
        SigmoidRouter(4, 6, k=2, num_groups=4)
    with pytest.raises(ValueError, match="topk_groups"):
        SigmoidRouter(4, 8, k=3, num_groups=4, topk_groups=1)


def test_aux_free_bias_update_is_a_centred_sign_step_and_selects_without_weighting() -> None:
    router = SoftmaxTopKRouter(4, 4, k=1, balance_rate=0.1, balance_update="manual")
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    x = _with_logits(router, logits)
    router(x)  # loads [2, 1, 1, 0], mean 1: signs [-1, 0, 0, +1], already centred
    torch.testing.assert_close(router.load, torch.tensor([2.0, 1.0, 1.0, 0.0]))
    router.update_bias()
    torch.testing.assert_close(router.selection_bias, torch.tensor([-0.1, 0.0, 0.0, 0.1]))
    assert router.load.sum() == 0
    router(x[:1])  # load [1, 0, 0, 0]: signs [-1, 1, 1, 1] -> bias [-0.2, .1, .1, .2] minus its mean 0.05
    router.update_bias()
    torch.testing.assert_close(router.selection_bias, torch.tensor([-0.25, 0.05, 0.05, 0.15]))
    with torch.no_grad():
        router.selection_bias.copy_(torch.tensor([-5.0, 0.0, 0.0, 5.0]))
    routing = router.eval()(x[:1]).routing  # the bias moves the choice to expert 3 ...
    assert routing.selected.tolist() == [[3]]
    torch.testing.assert_close(routing.weights[0], torch.softmax(logits[0], -1)[[3]])  # ... not the weight


def test_aux_free_bias_balances_a_skewed_router_and_survives_a_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    router = SigmoidRouter(8, 4, k=1, balance_rate=0.005)
    with torch.no_grad():
        router.weight.mul_(0.1)
        router.weight[0] += 0.5  # expert 0 wins for most tokens
    x = torch.randn(512, 8).abs()

    def load() -> torch.Tensor:
        router.eval()
        fraction = torch.bincount(router(x).routing.selected.reshape(-1), minlength=4).float() / len(x)
        router.train()
        return fraction

    before = load()
    for _ in range(100):  # one update per training forward
        router(x)
    after = load()
    assert before.max() > 0.9 and after.max() < 0.4
    assert abs(router.selection_bias.sum().item()) < 1e-5
    state = router.state_dict()
    assert "selection_bias" in state and "load" not in state
    clone = SigmoidRouter(8, 4, k=1, balance_rate=0.005)
    clone.load_state_dict(state)
    torch.testing.assert_close(clone.selection_bias, router.selection_bias)
    clone.eval(), router.eval()
    assert torch.equal(clone(x).routing.selected, router(x).routing.selected)


def test_aux_free_update_sums_the_loads_of_all_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    other_rank = torch.tensor([0.0, 0.0, 0.0, 6.0])  # another rank saw expert 3 overloaded
    calls = []

    def all_reduce(tensor: torch.Tensor, *args, **kwargs) -> None:
        calls.append(tensor.clone())
        tensor.add_(other_rank)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    router = SoftmaxTopKRouter(4, 4, k=1, balance_rate=0.1, balance_update="manual")
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]])
    router(_with_logits(router, logits))  # local loads [1, 1, 1, 0]; global [1, 1, 1, 6], mean 2.25
    router.update_bias()
    assert len(calls) == 1
    torch.testing.assert_close(router.selection_bias, torch.tensor([0.05, 0.05, 0.05, -0.15]))


def test_expert_choice_hand_computed_with_empty_slots_and_padding() -> None:
    router = ExpertChoiceRouter(4, 2, capacity_factor=1.0)  # c = ceil(1 * 4 / 2) = 2 tokens per expert
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.5, 0.0]])
    with torch.no_grad():
        router.weight.copy_(logits.t())
    x = torch.eye(4)
    probs = torch.softmax(logits, -1)
    route = router(x)
    # expert 0 takes tokens 0, 1 (p 0.88, 0.73); expert 1 takes 2 and 3 (p 0.95, 0.38)
    assert route.expert_tokens.tolist() == [[0, 1], [2, 3]]
    torch.testing.assert_close(route.expert_gates, torch.stack([probs[[0, 1], 0], probs[[2, 3], 1]]))
    assert route.routing.selected.tolist() == [[0, -1], [0, -1], [1, -1], [1, -1]]
    masked = router(x, mask=torch.tensor([True, False, True, True]))  # token 1 is padding
    assert masked.expert_tokens[0].tolist() == [0, 3]
    assert (masked.routing.selected[1] == -1).all() and masked.routing.weights[1].sum() == 0


def _soft_reference64(router: SoftMoERouter, layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """Soft MoE written out per sequence in float64 with explicit loops over sequences and slots."""
    phi, ex = router.phi.double(), layer.experts
    out = torch.zeros(x.shape, dtype=torch.float64)
    for b in range(x.shape[0]):
        xb = x[b].double()
        logits = xb @ phi  # [N, E * S]
        dispatch, combine = torch.softmax(logits, 0), torch.softmax(logits, 1)
        slot_out = []
        for m in range(logits.shape[1]):
            e = m // router.slots
            slot_in = (dispatch[:, m:m + 1] * xb).sum(0)
            h = torch.nn.functional.gelu(ex.w1[e].double() @ slot_in + ex.b1[e].double())
            slot_out.append(ex.w2[e].double() @ h + ex.b2[e].double())
        out[b] = combine @ torch.stack(slot_out)
    return out


def test_soft_moe_matches_a_per_sequence_reference_and_keeps_sequences_apart() -> None:
    torch.manual_seed(0)
    router = SoftMoERouter(6, 3, slots=2)
    layer = MoELayer(router=router, experts=MLPExperts(6, 8, 3))
    x = torch.randn(2, 5, 6)
    out, aux = layer(x)
    torch.testing.assert_close(out.double(), _soft_reference64(router, layer, x), atol=1e-5, rtol=1e-5)
    routing = layer.last_routing
    assert routing.selected is None and routing.probs.shape == (10, 3)
    torch.testing.assert_close(routing.probs.sum(-1), torch.ones(10))
    x2 = x.clone()
    x2[1] = torch.randn(5, 6)
    assert torch.allclose(layer(x2)[0][0], out[0])  # sequence 0 unaffected by sequence 1
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    masked, _ = layer(x2 * 1, mask=mask)
    x3 = x2.clone()
    x3[1, 3:] = 100.0  # padding content must not matter
    torch.testing.assert_close(layer(x3, mask=mask)[0][mask], masked[mask])


def test_noisy_top_k_learns_its_noise_and_is_deterministic_in_eval() -> None:
    torch.manual_seed(0)
    router = NoisyTopKRouter(8, 4, k=2)
    layer = MoELayer(router=router, experts=MLPExperts(8, 16, 4))
    x = torch.randn(32, 8)
    out, _ = layer(x)
    out.square().mean().backward()
    assert router.noise_weight.grad.abs().sum() > 0
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])
    assert router.noise_weight.shape == (4, 8) and math.isclose(router.noise_weight.abs().sum().item(), 0.0)


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # same initial router on both ranks
        router = SigmoidRouter(8, 4, k=1, balance_rate=0.01)
        torch.manual_seed(1 + rank)  # different data on each rank
        for _ in range(5):
            router(torch.randn(64, 8) + rank)  # the bias update runs inside every training forward
        torch.save(router.selection_bias, f"{out_dir}/bias{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_aux_free_bias_stays_identical_on_two_real_processes(tmp_path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("no gloo backend")
    torch.multiprocessing.start_processes(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                                          start_method="fork")  # fork: no re-import of torch in the children
    bias0, bias1 = torch.load(tmp_path / "bias0.pt"), torch.load(tmp_path / "bias1.pt")
    assert torch.equal(bias0, bias1) and bias0.abs().sum() > 0


@pytest.mark.parametrize("experts", [17, 64])
def test_renormalising_keeps_the_top_k_order_of_experts_with_equal_weights(experts: int) -> None:
    """The sort after the renormalisation is stable: experts of exactly equal weight keep top-k's order, so the
    top-1 expert (what the decomposition metrics count) does not depend on the sort's algorithm. Torch's CPU sort
    permutes more than 16 equal values when it is not asked to be stable."""
    router = SoftmaxTopKRouter(4, experts, k=experts, normalize=True)
    with torch.no_grad():
        router.weight.zero_()  # no bias by default: every logit is 0
    x = torch.randn(3, 4)
    route = router(x).routing
    expected = torch.full((3, experts), 0.0).topk(experts, dim=-1).indices  # what top-k picks among equal scores
    assert torch.equal(route.selected, expected)
    assert torch.allclose(route.weights, torch.full((3, experts), 1 / experts))
