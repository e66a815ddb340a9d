"""gmnn.nn.from_hf against tiny randomly initialised Hugging Face sparse MoE blocks."""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock  # noqa: E402
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock  # noqa: E402

from gmnn.nn import SharedExperts, from_hf  # noqa: E402
from tests.nn.hf_blocks import PerExpertMLP, transformers4_block  # noqa: E402


def _randomised(block: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for param in block.parameters():
        nn.init.normal_(param, std=0.3)
    return block


def _mixtral() -> nn.Module:
    config = transformers.MixtralConfig(hidden_size=16, intermediate_size=32, num_local_experts=6, num_experts_per_tok=2)
    return _randomised(MixtralSparseMoeBlock(config))


def _qwen(norm_topk_prob: bool) -> nn.Module:
    config = transformers.Qwen2MoeConfig(hidden_size=16, moe_intermediate_size=8, shared_expert_intermediate_size=24,
                                         num_experts=8, num_experts_per_tok=3, norm_topk_prob=norm_topk_prob)
    return _randomised(Qwen2MoeSparseMoeBlock(config))


def _hf_gradient(block: nn.Module, name: str) -> torch.Tensor:
    """The gradient of the HF parameter(s) that the gmnn parameter ``name`` was copied from."""
    fused = {"router.weight": lambda: block.gate.weight.grad, "experts.w1": lambda: block.experts.gate_up_proj.grad,
             "experts.w2": lambda: block.experts.down_proj.grad}
    if name in fused:
        return fused[name]()
    shared = block.shared_expert
    return {"shared.mlp.w1": lambda: torch.cat([shared.gate_proj.weight.grad, shared.up_proj.weight.grad]).unsqueeze(0),
            "shared.mlp.w2": lambda: shared.down_proj.weight.grad.unsqueeze(0),
            "shared.gate.weight": lambda: block.shared_expert_gate.weight.grad}[name]()


def _max_errors(block: nn.Module) -> tuple[float, float]:
    """Largest |HF - gmnn| of the outputs, and of the gradients (input and every parameter)."""
    layer = from_hf(block)
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    x_hf, x_gmnn = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    y_hf = block(x_hf)
    y_gmnn, _ = layer(x_gmnn)
    (y_hf * upstream).sum().backward()
    (y_gmnn * upstream).sum().backward()
    grad_errors = [(x_hf.grad - x_gmnn.grad).abs().max().item()]
    grad_errors += [(_hf_gradient(block, name) - p.grad).abs().max().item() for name, p in layer.named_parameters()]
    assert all(p.grad is not None for p in block.parameters())  # every HF parameter took part
    return (y_hf - y_gmnn).abs().max().item(), max(grad_errors)


def test_mixtral_block_outputs_and_gradients_match() -> None:
    block = _mixtral()
    layer = from_hf(block)
    assert layer.router.k == 2 and layer.router.normalize and layer.shared is None
    output_error, grad_error = _max_errors(block)
    print(f"{type(block).__name__}: max |output error| {output_error:.2e}, max |gradient error| {grad_error:.2e}")
    assert output_error < 1e-5 and grad_error < 1e-5


@pytest.mark.parametrize("norm_topk_prob", [False, True])
def test_qwen2_moe_block_with_shared_expert_and_its_gate_matches(norm_topk_prob: bool) -> None:
    block = _qwen(norm_topk_prob)
    layer = from_hf(block)
    assert isinstance(layer.shared, SharedExperts) and layer.shared.gate is not None
    assert layer.router.normalize is norm_topk_prob
    output_error, grad_error = _max_errors(block)
    print(f"{type(block).__name__}: max |output error| {output_error:.2e}, max |gradient error| {grad_error:.2e}")
    assert output_error < 1e-5 and grad_error < 1e-5


def test_per_expert_module_list_layout_of_transformers_4_converts_alike() -> None:
    fused = _mixtral()
    # transformers 4's block: a Linear gate, top_k on the block, MixtralBlockSparseTop2MLP experts (w1 gate, w3 up, w2 down)
    old = transformers4_block(fused, nn.ModuleList(PerExpertMLP(fused.experts, e) for e in range(6)))
    x = torch.randn(7, 16)
    torch.testing.assert_close(from_hf(old, verify=False)(x)[0], from_hf(fused)(x)[0])  # the stand-in has no forward


def test_unsupported_blocks_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="Linear is not a Hugging Face MoE block"):
        from_hf(nn.Linear(2, 2))
