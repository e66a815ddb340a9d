import pytest
import torch

from gmnn.nn.mixture.experts import Experts
from gmnn.nn.mixture.gates import AttentionGate
from gmnn.nn.mixture.networks import MLP, ConvNet, build_network


def test_batched_experts_match_the_loop_outputs_and_gradients() -> None:
    experts = Experts(lambda: MLP(6, 3, [8, 5]), 4)
    assert experts.batched
    x = torch.randn(7, 6)
    logits, hidden = experts(x)
    assert logits.shape == (7, 4, 3) and hidden.shape == (7, 4, 5)
    loop_logits = torch.stack([e(x)[0] for e in experts.experts], 1)
    loop_hidden = torch.stack([e(x)[1] for e in experts.experts], 1)
    torch.testing.assert_close(logits, loop_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, loop_hidden, atol=1e-5, rtol=1e-5)
    weights = torch.randn(7, 4, 3)
    grads = torch.autograd.grad((logits * weights).sum(), list(experts.parameters()))
    loop_grads = torch.autograd.grad((loop_logits * weights).sum(), list(experts.parameters()))
    for a, b in zip(grads, loop_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_conv_experts_batched_match_loop() -> None:
    experts = Experts(lambda: ConvNet((1, 12, 12), 10), 3)
    x = torch.randn(4, 1, 12, 12)
    logits, _ = experts(x)
    torch.testing.assert_close(logits, torch.stack([e(x)[0] for e in experts.experts], 1), atol=1e-5, rtol=1e-5)


def test_heterogeneous_experts_fall_back_to_the_loop() -> None:
    widths = iter([4, 4, 9])
    experts = Experts(lambda: MLP(3, 2, [next(widths), 5]), 3)
    assert not experts.batched
    assert experts(torch.randn(2, 3))[0].shape == (2, 3, 2)


def test_forward_selected_equals_gathering_from_all_experts() -> None:
    experts = Experts(lambda: MLP(5, 3, [8]), 4)
    x = torch.randn(9, 5)
    indices = torch.tensor([[0, 1], [3, 2], [1, 0], [0, 3], [2, 1], [1, 3], [0, 2], [3, 1], [1, 2]])
    full, _ = experts(x)
    expected = full.gather(1, indices.unsqueeze(-1).expand(-1, -1, 3))
    torch.testing.assert_close(experts.forward_selected(x, indices), expected, atol=1e-5, rtol=1e-5)


def test_forward_selected_gives_gradient_only_to_routed_experts() -> None:
    experts = Experts(lambda: MLP(5, 3, [8]), 4)
    experts.forward_selected(torch.randn(6, 5), torch.tensor([[1], [1], [3], [1], [3], [3]])).sum().backward()
    touched = [e.head.weight.grad is not None and e.head.weight.grad.abs().sum() > 0 for e in experts.experts]
    assert touched == [False, True, False, True]


def test_conv_net_is_the_papers_mnist_expert() -> None:
    net = ConvNet((1, 28, 28), 10)
    assert net.mlp.body[0].in_features == 169 and net.mlp.body[0].out_features == 5
    assert net.mlp.body[2].out_features == 32 and net.mlp.head.out_features == 10
    logits, hidden = net(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10) and hidden.shape == (2, 32)


def test_network_errors_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="network must be one of"):
        build_network("resnet", (2,), 2, [4])
    with pytest.raises(ValueError, match="hidden_dims"):
        MLP(2, 2, [])
    with pytest.raises(ValueError, match="num_experts"):
        Experts(lambda: MLP(2, 2), 0)
    with pytest.raises(ValueError, match="input_shape"):
        ConvNet((28, 28), 10)


def test_attention_gate_hand_computed() -> None:
    gate = AttentionGate(query_dim=2, key_dim=2, attention_dim=2)
    with torch.no_grad():
        gate.query.weight.copy_(torch.eye(2))
        gate.key.weight.copy_(torch.eye(2))
    q = torch.tensor([[1.0, 2.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    expected = torch.tensor([[1.0, 2.0, 3.0]]) / 2**0.5
    torch.testing.assert_close(gate(q, keys), expected)
    with pytest.raises(ValueError, match="expert_hidden"):
        gate(q, torch.zeros(1, 3, 5))


def test_experts_state_dict_is_plain_modules() -> None:
    experts = Experts(lambda: MLP(2, 2, [3]), 2)
    assert sorted(experts.state_dict()) == sorted(
        f"experts.{i}.{name}" for i in range(2) for name in ("body.0.weight", "body.0.bias", "head.weight", "head.bias")
    )


# ----------------------------------------------------------- batched kernels
class _TanhExpert(torch.nn.Module):
    """Not an MLP/ConvNet: runs through the generic vmap path."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 5)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.tanh(self.body(x.flatten(1)))
        return self.head(hidden), hidden


FACTORIES = {
    "mlp": (lambda: MLP(6, 3, [8, 5]), (6,)),
    "mlp_no_head": (lambda: MLP(6, None, [7]), (6,)),
    "conv": (lambda: ConvNet((2, 9, 9), 4, channels=3, hidden_dims=[5]), (2, 9, 9)),
    "vmap": (_TanhExpert, (6,)),
}


def _loop(experts: Experts, x: torch.Tensor, grouped: bool) -> tuple[torch.Tensor, torch.Tensor]:
    outputs = [e(x[i] if grouped else x) for i, e in enumerate(experts.experts)]
    dim = 0 if grouped else 1
    return torch.stack([o[0] for o in outputs], dim), torch.stack([o[1] for o in outputs], dim)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("grouped", [False, True], ids=["shared", "grouped"])
def test_stacked_kernels_match_the_loop_outputs_and_gradients(name: str, grouped: bool) -> None:
    factory, shape = FACTORIES[name]
    experts = Experts(factory, 3)
    assert experts.batched
    x = torch.randn(3, 5, *shape) if grouped else torch.randn(5, *shape)
    logits, hidden = experts.forward_grouped(x) if grouped else experts(x)
    loop_logits, loop_hidden = _loop(experts, x, grouped)
    assert logits.shape == loop_logits.shape and hidden.shape == loop_hidden.shape
    torch.testing.assert_close(logits, loop_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, loop_hidden, atol=1e-5, rtol=1e-5)
    w_out, w_hidden = torch.randn_like(logits), torch.randn_like(hidden)
    params = list(experts.parameters())
    grads = torch.autograd.grad((logits * w_out).sum() + (hidden * w_hidden).sum(), params)
    loop_grads = torch.autograd.grad((loop_logits * w_out).sum() + (loop_hidden * w_hidden).sum(), params)
    for a, b in zip(grads, loop_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _mlp_float64(mlp: MLP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, last hidden layer)`` of an MLP, by hand in float64 from its weights: relu(W h + b) per hidden layer."""
    *hidden_layers, head = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    h = x.double()
    for layer in hidden_layers:
        h = torch.relu(h @ layer.weight.double().T + layer.bias.double())
    return h @ head.weight.double().T + head.bias.double(), h


def test_heterogeneous_experts_run_one_after_the_other_and_match_float64() -> None:
    widths = iter([4, 9])
    experts = Experts(lambda: MLP(3, 2, [next(widths), 5]), 2)
    assert not experts.batched
    x = torch.randn(2, 5, 3)  # grouped: expert e on its own rows x[e]
    logits, hidden = experts.forward_grouped(x)
    assert logits.shape == (2, 5, 2) and hidden.shape == (2, 5, 5)
    for e in range(2):
        ref_logits, ref_hidden = _mlp_float64(experts[e], x[e])
        torch.testing.assert_close(logits[e].double(), ref_logits, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(hidden[e].double(), ref_hidden, atol=1e-6, rtol=1e-6)
    logits, hidden = experts(x[0])  # shared: every expert on every row
    assert logits.shape == (5, 2, 2) and hidden.shape == (5, 2, 5)
    for e in range(2):
        ref_logits, ref_hidden = _mlp_float64(experts[e], x[0])
        torch.testing.assert_close(logits[:, e].double(), ref_logits, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(hidden[:, e].double(), ref_hidden, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------ with capacity
def test_capacity_drops_the_late_pairs_and_gives_them_zero_logits() -> None:
    experts = Experts(lambda: MLP(5, 3, [8]), 2)
    x = torch.randn(3, 5)
    # first choices: s0->0, s1->1, s2->0; second choices: s0->1, s1->0 (3rd pair of expert 0), s2->1 (3rd of expert 1)
    indices = torch.tensor([[0, 1], [1, 0], [0, 1]])
    logits, kept = experts.forward_with_capacity(x, indices, capacity=2)
    assert kept.tolist() == [[True, True], [True, False], [True, False]]
    full, _ = experts(x)
    expected = full.gather(1, indices.unsqueeze(-1).expand(-1, -1, 3)) * kept.unsqueeze(-1)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_large_capacity_equals_forward_selected() -> None:
    experts = Experts(lambda: ConvNet((1, 8, 8), 3, hidden_dims=[4]), 4)
    x = torch.randn(10, 1, 8, 8)
    indices = torch.randint(0, 4, (10, 2))
    logits, kept = experts.forward_with_capacity(x, indices, capacity=20)
    assert kept.all()
    torch.testing.assert_close(logits, experts.forward_selected(x, indices), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="capacity"):
        experts.forward_with_capacity(x, indices, capacity=0)


@pytest.mark.parametrize(("balanced", "batched_call"), [(True, True), (False, False)])
def test_forward_selected_batches_balanced_routing_and_loops_otherwise(balanced: bool, batched_call: bool, monkeypatch) -> None:
    experts = Experts(lambda: ConvNet((1, 6, 6), 3, hidden_dims=[4]), 4)
    x = torch.randn(64, 1, 6, 6)
    indices = (torch.arange(128).view(64, 2) % 4) if balanced else torch.zeros(64, 1, dtype=torch.long)
    calls = []
    original = experts.forward_with_capacity
    monkeypatch.setattr(experts, "forward_with_capacity", lambda *a: calls.append(a[2]) or original(*a))
    selected = experts.forward_selected(x, indices)
    assert calls == ([32] if batched_call else [])
    full, _ = experts(x)
    torch.testing.assert_close(selected, full.gather(1, indices.unsqueeze(-1).expand(-1, -1, 3)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("expert_channels", "gate_channels"), [(1, 1), (2, 3)])
def test_conv_experts_and_a_conv_gate_share_one_first_convolution(expert_channels: int, gate_channels: int) -> None:
    """One product for the first layers of the experts and the gate: the outputs and every parameter's
    gradient equal the experts' and the gate's own forward passes."""
    from gmnn.nn.functional.conv_pool import PATCH_MEMO

    torch.manual_seed(0)
    shape = (2, 12, 12)
    experts = Experts(lambda: ConvNet(shape, 4, expert_channels, (5, 6)), 3)
    gate = ConvNet(shape, 3, gate_channels, (7,))
    x = torch.randn(8, *shape)
    both = experts.forward_with_gate(gate, x)
    assert both is not None
    (logits, hidden), (gate_logits, gate_hidden) = both
    PATCH_MEMO._forget(None)  # the reference below computes its windows afresh
    want_logits = torch.stack([expert(x)[0] for expert in experts.experts], 1)
    want_hidden = torch.stack([expert(x)[1] for expert in experts.experts], 1)
    want_gate, want_gate_hidden = gate(x)
    for got, want in ((logits, want_logits), (hidden, want_hidden), (gate_logits, want_gate), (gate_hidden, want_gate_hidden)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    upstream = [torch.randn_like(t) for t in (logits, gate_logits)]
    params = [*experts.parameters(), *gate.parameters()]
    got = torch.autograd.grad((logits * upstream[0]).sum() + (gate_logits * upstream[1]).sum(), params)
    want = torch.autograd.grad((want_logits * upstream[0]).sum() + (want_gate * upstream[1]).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_only_plain_conv_experts_and_gate_share_their_first_convolution() -> None:
    shape = (1, 10, 10)
    conv_experts = Experts(lambda: ConvNet(shape, 2), 2)
    x = torch.randn(3, *shape)
    assert conv_experts.forward_with_gate(MLP(100, 2), x) is None
    assert Experts(lambda: MLP(100, 2), 2).forward_with_gate(ConvNet(shape, 2), x) is None
    assert Experts(lambda: ConvNet(shape, 2), 2, batched=False).forward_with_gate(ConvNet(shape, 2), x) is None
    other_kernel = ConvNet(shape, 2)
    other_kernel.features[0] = torch.nn.Conv2d(1, 1, kernel_size=3, padding=1)
    assert conv_experts.forward_with_gate(other_kernel, x) is None
