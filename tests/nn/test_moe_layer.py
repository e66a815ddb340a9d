import math
import re

import pytest
import torch
import torch.nn.functional as F

from gmnn.nn import (
    ExpertChoiceRouter,
    GeGLUExperts,
    MLPExperts,
    MoELayer,
    NoisyTopKRouter,
    SharedExperts,
    SigmoidRouter,
    SoftmaxTopKRouter,
    SoftMoERouter,
    SwiGLUExperts,
)
from gmnn.nn.moe.layer import routed_load_balancing_loss
from gmnn.nn.functional.regularizers import router_z_loss
from tests.documentation import documentation_text

ACT = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


def _ffn64(x, w1, b1, w2, b2, activation: str, gated: bool):
    """One expert written out in float64: x [N, D] -> [N, D]."""
    h = x @ w1.T + (0 if b1 is None else b1)
    if gated:
        half = h.shape[-1] // 2
        h = ACT[activation](h[:, :half]) * h[:, half:]
    else:
        h = ACT[activation](h)
    return h @ w2.T + (0 if b2 is None else b2)


def _reference64(layer: MoELayer, x: torch.Tensor):
    """Every expert on every token in float64, non-selected experts weighted 0; returns (out, leaf params)."""
    p = {n: t.detach().double().requires_grad_() for n, t in layer.named_parameters()}
    ex, router = layer.experts, layer.router
    tokens = x.double().reshape(-1, layer.d_model)
    logits = tokens @ p["router.weight"].T + p.get("router.bias", 0)
    scores = torch.sigmoid(logits) if isinstance(router, SigmoidRouter) else torch.softmax(logits, -1)
    chosen = torch.zeros_like(scores).scatter(-1, logits.topk(router.k, dim=-1).indices, 1.0)
    weights = scores * chosen
    if router.normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    weights = weights * router.scale
    out = 0
    for e in range(layer.num_experts):
        b1, b2 = p.get("experts.b1"), p.get("experts.b2")
        y = _ffn64(tokens, p["experts.w1"][e], None if b1 is None else b1[e], p["experts.w2"][e],
                   None if b2 is None else b2[e], ex.activation, ex.gated)
        out = out + weights[:, e:e + 1] * y
    if layer.shared is not None:
        sh = layer.shared.mlp
        y = _ffn64(tokens, p["shared.mlp.w1"][0], None, p["shared.mlp.w2"][0], None, sh.activation, sh.gated)
        if layer.shared.gate is not None:
            y = torch.sigmoid(tokens @ p["shared.gate.weight"].T) * y
        out = out + y
    return out.view(x.shape), p


def _swiglu_shared(d: int, e: int, k: int) -> MoELayer:
    return MoELayer(router=SoftmaxTopKRouter(d, e, k), experts=SwiGLUExperts(d, 16, e),
                    shared=SharedExperts(d, 8, num_shared=2, gate=True))


LAYERS = {
    "top1-switch": lambda: MoELayer(d_model=8, hidden=16, num_experts=4, k=1),
    "top2": lambda: MoELayer(d_model=8, hidden=16, num_experts=4, k=2),
    "top2-capacity": lambda: MoELayer(d_model=8, hidden=16, num_experts=4, k=2, capacity_factor=8.0),
    "dense": lambda: MoELayer(d_model=8, hidden=16, num_experts=4, k=4),
    "top2-unnormalised": lambda: MoELayer(router=SoftmaxTopKRouter(8, 4, 2, normalize=False), experts=MLPExperts(8, 16, 4)),
    "swiglu-shared": lambda: _swiglu_shared(8, 4, 2),
    "geglu-capacity": lambda: MoELayer(router=SoftmaxTopKRouter(8, 6, 2), experts=GeGLUExperts(8, 4, 6), capacity_factor=6.0),
    "sigmoid-top2-scaled": lambda: MoELayer(router=SigmoidRouter(8, 4, 2, scale=2.5), experts=MLPExperts(8, 16, 4)),
    "fine-grained": lambda: MoELayer(router=SoftmaxTopKRouter(8, 32, 6), experts=SwiGLUExperts(8, 4, 32)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_a_float64_dense_reference_in_output_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = torch.randn(3, 7, 8)
    out, aux = layer(x)
    expected, leaves = _reference64(layer, x)
    assert out.shape == x.shape and aux.shape == ()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(x.shape, dtype=torch.float64)
    (out.double() * upstream).sum().backward()
    (expected * upstream).sum().backward()
    for param_name, param in layer.named_parameters():
        torch.testing.assert_close(param.grad.double(), leaves[param_name].grad, atol=1e-5, rtol=1e-4, msg=param_name)


ROUTERS = {
    "softmax": lambda k: SoftmaxTopKRouter(8, 4, k),
    "softmax-capacity": lambda k: SoftmaxTopKRouter(8, 4, k),
    "noisy": lambda k: NoisyTopKRouter(8, 4, k),
    "sigmoid": lambda k: SigmoidRouter(8, 4, k),
    "sigmoid-groups-auxfree": lambda k: SigmoidRouter(8, 4, k, num_groups=2, topk_groups=1, balance_rate=1e-3),
    "expert-choice": lambda k: ExpertChoiceRouter(8, 4, capacity_factor=float(k)),
    "soft": lambda k: SoftMoERouter(8, 4, slots=k),
}


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", list(ROUTERS))
def test_router_gets_a_gradient_from_the_task_loss_alone(name: str, k: int) -> None:
    torch.manual_seed(0)
    router = ROUTERS[name](k)
    layer = MoELayer(router=router, experts=MLPExperts(8, 16, 4), capacity_factor=1.5 if "capacity" in name else 0.0)
    out, _ = layer(torch.randn(4, 6, 8))
    out.square().mean().backward()  # the aux loss left out on purpose
    grad = router.phi.grad if name == "soft" else router.weight.grad
    assert grad is not None and grad.norm() > 1e-4


def test_renormalised_top1_gives_the_router_no_task_gradient() -> None:
    """The old default (kept behind normalize=True): why Switch scaling is the top-1 default."""
    router = SoftmaxTopKRouter(8, 4, 1, normalize=True)
    out, _ = MoELayer(router=router, experts=MLPExperts(8, 16, 4))(torch.randn(10, 8))
    out.square().mean().backward()
    assert router.weight.grad.abs().max() < 1e-8  # rounding only: w / w.sum() == 1


def test_capacity_overflow_drops_tokens_and_counts_them() -> None:
    layer = MoELayer(d_model=3, hidden=4, num_experts=4, k=1, capacity_factor=1.0)
    with torch.no_grad():  # every token prefers expert 0
        layer.router.weight.zero_()
        layer.router.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    x = torch.randn(8, 3)
    out, _ = layer(x)  # capacity ceil(1 * 8 * 1 / 4) = 2: tokens 0, 1 kept, 2..7 dropped
    p0 = math.exp(5) / (math.exp(5) + 3)  # Switch scaling by the router probability
    torch.testing.assert_close(layer.dropped_fraction, torch.tensor(0.75))
    torch.testing.assert_close(out[:2], layer.expert(0, x[:2]) * p0)
    assert torch.equal(out[2:], torch.zeros(6, 3))
    assert layer.last_routing.dropped[:, 0].tolist() == [False, False] + [True] * 6


def test_padding_takes_no_capacity_gets_no_output_and_leaves_the_losses_unchanged() -> None:
    torch.manual_seed(0)
    layer = MoELayer(d_model=4, hidden=8, num_experts=4, k=1, capacity_factor=1.0, importance_weight=0.5)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    x = torch.randn(1, 8, 4)
    mask = torch.tensor([[False, False, True, True, True, True, True, True]])
    out, aux = layer(x, mask=mask)  # capacity 2 goes to tokens 2, 3, not to the padding 0, 1
    assert torch.equal(out[0, :2], torch.zeros(2, 4)) and out[0, 2:4].abs().sum() > 0
    assert torch.equal(out[0, 4:], torch.zeros(4, 4))
    torch.testing.assert_close(layer.dropped_fraction, torch.tensor(4 / 6))
    torch.manual_seed(1)
    layer = MoELayer(d_model=4, hidden=8, num_experts=4, k=2, importance_weight=0.5)
    x = torch.randn(2, 5, 4)
    mask = torch.rand(2, 5) > 0.4
    _, aux_masked = layer(x, mask=mask)
    masked_losses = layer.last_losses
    _, aux_subset = layer(x[mask])
    torch.testing.assert_close(aux_masked, aux_subset)
    for name in ("balance", "importance", "z"):
        torch.testing.assert_close(masked_losses[name], layer.last_losses[name])


def test_aux_losses_hand_computed() -> None:
    uniform = torch.full((4, 2), 0.5)
    assert routed_load_balancing_loss(uniform, torch.tensor([[0], [1], [0], [1]])).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert routed_load_balancing_loss(collapsed, torch.tensor([[0], [0]])).item() == pytest.approx(2.0)
    assert router_z_loss(torch.zeros(3, 4)).item() == pytest.approx(math.log(4) ** 2)
    layer = MoELayer(d_model=2, hidden=3, num_experts=4, k=1, balance_weight=0.5, z_weight=0.25)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.bias.zero_()
    _, aux = layer(torch.randn(5, 2))  # all tokens to expert 0 (ties), probs uniform: balance = 4 * 1 * 0.25 = 1
    assert aux.item() == pytest.approx(0.5 * 1.0 + 0.25 * math.log(4) ** 2)
    assert layer.last_losses["balance"].item() == pytest.approx(1.0)
    assert layer.last_routing.losses["z"].item() == pytest.approx(math.log(4) ** 2)


def test_global_balance_counts_the_loads_of_all_ranks_but_keeps_the_gradient_local(monkeypatch) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *args: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *a, **kw: tensor.add_(torch.tensor([0.0, 4.0])))
    probs = torch.tensor([[0.75, 0.25], [0.75, 0.25]], requires_grad=True)
    selected = torch.tensor([[0], [0]])  # local f = [1, 0]; with the other rank's [0, 4]: f = [1/3, 2/3]
    loss = routed_load_balancing_loss(probs, selected, global_counts=True)
    assert loss.item() == pytest.approx(2 * (0.75 / 3 + 0.25 * 2 / 3))
    assert routed_load_balancing_loss(probs, selected).item() == pytest.approx(2 * 0.75)
    loss.backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[1 / 3, 2 / 3], [1 / 3, 2 / 3]]))


def test_last_routing_is_detached_and_return_routing_keeps_gradients() -> None:
    layer = MoELayer(d_model=8, hidden=16, num_experts=4, k=2)
    x = torch.randn(2, 3, 8)
    out, aux, routing = layer(x, return_routing=True)
    assert routing.weights.requires_grad and not layer.last_routing.weights.requires_grad
    assert layer.last_routing.probs.shape == (6, 4) and layer.last_routing.selected.shape == (6, 2)
    assert layer.last_routing.selected.dtype == torch.int64 and layer.last_routing.logits.shape == (6, 4)
    assert (layer.last_routing.weights[:, 0] >= layer.last_routing.weights[:, 1]).all()
    torch.testing.assert_close(layer.last_routing.weights.sum(-1), torch.ones(6))


def test_router_noise_only_while_training() -> None:
    layer = MoELayer(d_model=4, hidden=4, num_experts=8, k=1, noise_std=10.0)
    x = torch.randn(32, 4)
    assert not torch.equal(layer(x)[0], layer(x)[0])
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])


def test_bad_arguments_name_the_parameter() -> None:
    for kwargs, match in [({"k": 5}, "k must be"), ({"noise_std": -1.0}, "noise_std"),
                          ({"capacity_factor": -0.5}, "capacity_factor"), ({"d_model": 0}, "d_model"),
                          ({"balance_scope": "world"}, "balance_scope")]:
        with pytest.raises(ValueError, match=match):
            MoELayer(**{"d_model": 4, "hidden": 4, "num_experts": 4, **kwargs})
    with pytest.raises(ValueError, match="d_model=4"):
        MoELayer(4, 4, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="num_experts"):
        MoELayer(router=SoftmaxTopKRouter(4, 4), experts=MLPExperts(4, 8, 6))
    with pytest.raises(ValueError, match="capacity_factor"):
        MoELayer(router=ExpertChoiceRouter(4, 4), experts=MLPExperts(4, 8, 4), capacity_factor=1.0)
    with pytest.raises(ValueError, match="mask"):
        MoELayer(4, 4, 4)(torch.randn(2, 5, 4), mask=torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("router", ["switch", "expert-choice"])
def test_layer_learns_a_piecewise_function_as_a_residual_ffn(router: str) -> None:
    torch.manual_seed(0)
    if router == "switch":
        layer = MoELayer(d_model=2, hidden=16, num_experts=4, k=1)
    else:
        layer = MoELayer(router=ExpertChoiceRouter(2, 4, capacity_factor=1.0), experts=MLPExperts(2, 16, 4))
    x = torch.randn(256, 2)
    target = torch.where(x[:, :1] > 0, x.flip(-1), -x)  # a different linear map on each half
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        out, aux = layer(x)
        loss = (x + out - target).square().mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        (loss + aux).backward()
        optimizer.step()
    assert losses[-1] < 0.1 * losses[0]


def test_layer_is_configured_from_yaml_class_paths() -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(MoELayer, "layer")
    config = parser.parse_string("""
layer:
  router: {class_path: gmnn.nn.SigmoidRouter, init_args: {d_model: 8, num_experts: 4, k: 2, balance_rate: 0.001}}
  experts: {class_path: gmnn.nn.SwiGLUExperts, init_args: {d_model: 8, hidden: 16, num_experts: 4}}
  shared: {class_path: gmnn.nn.SharedExperts, init_args: {d_model: 8, hidden: 16}}
""")
    layer = parser.instantiate_classes(config).layer
    assert isinstance(layer.router, SigmoidRouter) and layer.router.balance_rate == 0.001
    assert isinstance(layer.experts, SwiGLUExperts) and layer.shared is not None
    assert layer(torch.randn(3, 8))[0].shape == (3, 8)


def test_readme_transformer_block_example_runs() -> None:
    """The block tagged moe-layer in README.md or a docs page (docs/moe-layer.md)."""
    block = re.search(r"<!-- readme-test: moe-layer -->\n```python\n(.*?)```", documentation_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/moe-layer.md", "exec"), namespace)
    assert namespace["y"].shape == (2, 10, 32) and namespace["aux_loss"].item() > 0
    ffn = namespace["block"].ffn
    assert ffn.experts.w1.grad.abs().sum() > 0 and ffn.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["capacity", "aux-free-capacity", "expert-choice", "soft"])
def test_static_shape_paths_compile_into_one_graph(name: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = {
        "capacity": lambda: MoELayer(d_model=8, hidden=16, num_experts=4, k=2, capacity_factor=1.25),
        "aux-free-capacity": lambda: MoELayer(router=SigmoidRouter(8, 4, 2, balance_rate=1e-3),
                                              experts=SwiGLUExperts(8, 16, 4), capacity_factor=1.25),
        "expert-choice": lambda: MoELayer(router=ExpertChoiceRouter(8, 4), experts=SwiGLUExperts(8, 16, 4)),
        "soft": lambda: MoELayer(router=SoftMoERouter(8, 4, slots=2), experts=MLPExperts(8, 16, 4)),
    }[name]()
    x = torch.randn(2, 6, 8)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    layer.eval()  # no bias update: both calls see the same router
    out, aux = compiled(x)
    (out.sum() + aux).backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    eager_out, eager_aux = layer(x)
    (eager_out.sum() + eager_aux).backward()
    torch.testing.assert_close(out, eager_out)
    for a, b in zip(grads, [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["top2", "dense", "swiglu-shared", "geglu-capacity", "sigmoid-top2-scaled"])
def test_bfloat16_and_autocast_run_and_stay_close_to_float32(name: str) -> None:
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = torch.randn(3, 7, 8)
    expected, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out, aux = layer(x)
    (autocast_out.float().sum() + aux).backward()
    low, _ = layer.to(torch.bfloat16)(x.bfloat16())
    assert autocast_out.dtype == low.dtype == torch.bfloat16 and aux.dtype == torch.float32
    for out in (autocast_out, low):
        torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)
