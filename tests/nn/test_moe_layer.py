import math

import pytest
import torch

from gmnn.nn import MoELayer
from gmnn.nn.moe_layer import routed_load_balancing_loss
from gmnn.nn.regularizers import router_z_loss


def _dense_reference(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, non-selected experts masked out of the renormalised softmax."""
    tokens = x.reshape(-1, layer.d_model)
    logits = layer.router(tokens)
    top = logits.topk(layer.k, dim=-1).indices
    masked = torch.full_like(logits, float("-inf")).scatter(-1, top, logits.gather(-1, top))
    weights = torch.softmax(masked, dim=-1)  # [T, E], zero off the top k
    outputs = torch.stack([layer.expert(e, tokens) for e in range(layer.num_experts)], 1)  # [T, E, D]
    return (weights.unsqueeze(-1) * outputs).sum(1).view(x.shape)


@pytest.mark.parametrize(("k", "capacity_factor"), [(1, 0.0), (2, 0.0), (2, 8.0), (4, 0.0)])
def test_sparse_layer_matches_the_masked_dense_reference(k: int, capacity_factor: float) -> None:
    layer = MoELayer(d_model=6, hidden=10, num_experts=4, k=k, capacity_factor=capacity_factor)
    x = torch.randn(3, 7, 6)
    out, aux = layer(x)
    expected = _dense_reference(layer, x)
    assert out.shape == x.shape and aux.shape == ()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    weight = torch.randn_like(out)
    params = list(layer.parameters())
    grads = torch.autograd.grad((out * weight).sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad((expected * weight).sum(), params, allow_unused=True)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_capacity_overflow_drops_tokens_and_counts_them() -> None:
    layer = MoELayer(d_model=3, hidden=4, num_experts=4, k=1, capacity_factor=1.0)
    with torch.no_grad():  # every token prefers expert 0
        layer.router.weight.zero_()
        layer.router.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    x = torch.randn(8, 3)
    out, _ = layer(x)  # capacity ceil(1 * 8 * 1 / 4) = 2: tokens 0, 1 kept, 2..7 dropped
    torch.testing.assert_close(layer.dropped_fraction, torch.tensor(0.75))
    torch.testing.assert_close(out[:2], layer.expert(0, x[:2]) * 1.0)
    assert torch.equal(out[2:], torch.zeros(6, 3))


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


def test_router_noise_only_while_training() -> None:
    layer = MoELayer(d_model=4, hidden=4, num_experts=8, k=1, noise_std=10.0)
    x = torch.randn(32, 4)
    assert not torch.equal(layer(x)[0], layer(x)[0])
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])


def test_bad_arguments_name_the_parameter() -> None:
    for kwargs, match in [({"k": 5}, "k must be"), ({"noise_std": -1.0}, "noise_std"),
                          ({"capacity_factor": -0.5}, "capacity_factor"), ({"d_model": 0}, "d_model")]:
        with pytest.raises(ValueError, match=match):
            MoELayer(**{"d_model": 4, "hidden": 4, "num_experts": 4, **kwargs})
    with pytest.raises(ValueError, match="d_model=4"):
        MoELayer(4, 4, 4)(torch.randn(2, 5))


def test_layer_learns_a_piecewise_function_as_a_residual_ffn() -> None:
    torch.manual_seed(0)
    layer = MoELayer(d_model=2, hidden=16, num_experts=4, k=1)
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


def test_readme_transformer_block_example_runs() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"<!-- readme-test: moe-layer -->\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (2, 10, 32) and namespace["aux_loss"].item() > 0
    assert namespace["block"].ffn.w1.grad.abs().sum() > 0 and namespace["block"].ffn.router.weight.grad.abs().sum() > 0
