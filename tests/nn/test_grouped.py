import pytest
import torch

from gmnn.nn import MoELayer
from gmnn.nn.functional.grouped import can_group, grouped_linear, grouped_mm_works
from gmnn.nn.moe.experts import MLPExperts

needs_grouped_mm = pytest.mark.skipif(not grouped_mm_works("cpu", torch.float32), reason="no torch._grouped_mm on CPU")


@needs_grouped_mm
def test_grouped_linear_matches_a_loop_over_groups_with_an_empty_group() -> None:
    torch.manual_seed(0)
    counts = [3, 0, 5, 4]
    x = torch.randn(sum(counts), 8, requires_grad=True)
    weight = torch.randn(4, 16, 8, requires_grad=True)
    bias = torch.randn(4, 16, requires_grad=True)
    group = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    out = grouped_linear(x, weight, bias, offsets, group)
    expected = torch.cat([rows @ weight[e].t() + bias[e] for e, rows in enumerate(x.split(counts))])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad((out * upstream).sum(), (x, weight, bias))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (x, weight, bias))
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert grads[1][1].abs().sum() == 0  # the empty group's weight gets no gradient


def test_widths_that_break_the_stride_rule_are_not_grouped() -> None:
    x = torch.randn(4, 6)
    assert not can_group(x, 6, 10)


@needs_grouped_mm
@pytest.mark.parametrize("k", [1, 2])
def test_layer_without_host_sync_matches_the_loop_fallback(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    layer = MoELayer(d_model=8, hidden=16, num_experts=6, k=k)
    x = torch.randn(5, 7, 8)
    assert can_group(x, 8, 16)
    out, _ = layer(x)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    monkeypatch.setattr(MLPExperts, "can_group", lambda self, x: False)
    loop_out, _ = layer(x)
    loop_grads = torch.autograd.grad(loop_out.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(out, loop_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, loop_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_grouped_mm
def test_compiled_float32_layer_matches_eager() -> None:
    # torch._grouped_mm runs float32 here, but its meta kernel (what compile traces) takes bf16/fp16 only
    torch.manual_seed(0)
    layer = MoELayer(d_model=16, hidden=32, num_experts=4, k=2)
    x = torch.randn(2, 5, 16)
    assert can_group(x, 16, 32)  # eagerly the grouped path
    out, _ = layer(x)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    torch._dynamo.reset()
    compiled_out, _ = torch.compile(layer, backend="aot_eager")(x)
    compiled_grads = torch.autograd.grad(compiled_out.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(compiled_out, out, atol=1e-5, rtol=1e-5)
    for a, b in zip(compiled_grads, grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_a_first_probe_without_gradients_gives_the_same_answer(mode: str) -> None:
    """Asked first under no_grad (a validation pass, ``from_hf``'s check), the probe still runs its backward:
    a cached ``False`` would send every later call down the loop over experts."""
    from gmnn.nn.functional import grouped

    expected = grouped._probe_once("cpu", torch.float32)
    grouped._probe.cache_clear()
    try:
        with torch.no_grad() if mode == "no_grad" else torch.inference_mode():
            assert grouped_mm_works("cpu", torch.float32) is expected
    finally:
        grouped._probe.cache_clear()


def test_the_loop_over_experts_matches_the_grouped_path_with_one_gradient_node_per_parameter() -> None:
    torch.manual_seed(0)
    experts = MLPExperts(16, 32, 4)
    rows = torch.randn(10, 16)
    counts = [3, 0, 5, 2]
    ids = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    offsets = torch.tensor(counts).cumsum(0).to(torch.int32)
    looped = experts.looped(rows, counts)
    reference = torch.cat([experts.expert(e, part) for e, part in enumerate(rows.split(counts)) if counts[e]])
    torch.testing.assert_close(looped, reference, rtol=0, atol=0)
    if grouped_mm_works("cpu", torch.float32):
        torch.testing.assert_close(looped, experts.grouped(rows, offsets, ids), rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(looped.sum(), list(experts.parameters()))
    ref_grads = torch.autograd.grad(reference.sum(), list(experts.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_probe_is_marked_constant_as_torch_compiler_would_mark_it() -> None:
    """grouped.py sets the attribute itself (``torch.compiler.assume_constant_result`` imports ``torch._dynamo``)."""

    def probe() -> bool:
        return True

    assert torch.compiler.assume_constant_result(probe) is probe
    added = vars(probe)
    assert added and all(getattr(grouped_mm_works, name, None) == value for name, value in added.items())
