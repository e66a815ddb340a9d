"""from_hf / to_hf on every Hugging Face MoE family of the installed transformers: exact (outputs and gradients) or refused."""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from gmnn.nn import from_hf, to_hf  # noqa: E402
from gmnn.nn.moe.hf import FAMILIES, REFUSED, spec_of  # noqa: E402
from tests.nn.hf_blocks import BLOCKS, D, REFUSED_BLOCKS, config, make  # noqa: E402


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 5, D, generator=generator), torch.randn(3, 5, D, generator=generator)


def parity(block: nn.Module) -> tuple[float, float]:
    """Largest |HF - gmnn| of the outputs, and of the gradients (the input's and every trainable HF tensor's)."""
    layer = from_hf(block)
    x, upstream = _inputs()
    x_hf, x_gmnn = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_hf = block(x_hf)
    y_gmnn, _ = layer(x_gmnn)
    (y_hf * upstream).sum().backward()
    (y_gmnn * upstream).sum().backward()
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)  # every HF parameter took part
    params = dict(layer.named_parameters())
    errors = [(x_hf.grad - x_gmnn.grad).abs().max().item()]
    for link in spec_of(block).links:
        if all(t.grad is not None for t in link.sources):
            errors.append((link.read(lambda t: t.grad) - params[link.name].grad).abs().max().item())
        else:
            assert link.name not in params or not params[link.name].requires_grad or link.name == "router.selection_bias"
    return (y_hf - y_gmnn).abs().max().item(), max(errors)


@pytest.mark.parametrize("family", list(BLOCKS))
def test_family_outputs_and_gradients_match(family: str) -> None:
    block = make(family)
    output_error, grad_error = parity(block)
    print(f"{family}: max |output error| {output_error:.1e}, max |gradient error| {grad_error:.1e}")
    assert output_error < 1e-5 and grad_error < 1e-5


def test_every_converted_class_is_tested_and_refusals_are_disjoint() -> None:
    tested = {BLOCKS[family][2] for family in BLOCKS}
    assert tested == set(FAMILIES) and not set(FAMILIES) & set(REFUSED)


@pytest.mark.parametrize("family", list(REFUSED_BLOCKS))
def test_unrepresentable_families_are_refused_by_name(family: str) -> None:
    block = make(family, table=REFUSED_BLOCKS)
    with pytest.raises(ValueError, match=f"^{type(block).__name__} \\({family}\\) is refused: ") as caught:
        from_hf(block)
    assert "\n" not in str(caught.value)


def test_unknown_settings_tensors_and_classes_are_refused() -> None:
    jittery = make("Mixtral", router_jitter_noise=0.1)
    with pytest.raises(ValueError, match="MixtralSparseMoeBlock: jitter_noise=0.1"):
        from_hf(jittery)
    deepseek = make("DeepSeek-V2")
    deepseek.gate.topk_method = "noaux_tc"
    with pytest.raises(ValueError, match="DeepseekV2Moe: topk_method='noaux_tc'"):
        from_hf(deepseek)
    biased = make("Qwen3-MoE")
    biased.experts.extra_bias = nn.Parameter(torch.zeros(8))  # a tensor gmnn would silently drop
    with pytest.raises(ValueError, match=r"Qwen3MoeSparseMoeBlock: tensors \['experts.extra_bias'\] have no place"):
        from_hf(biased)

    class MyMoE(nn.Module):
        pass
    with pytest.raises(ValueError, match="MyMoE is not a Hugging Face MoE block gmnn knows"):
        from_hf(MyMoE())


def test_a_block_whose_forward_differs_is_refused_by_the_random_token_check() -> None:
    block = make("Mixtral")
    block.gate.forward = lambda h: (None, *torch.softmax(h @ block.gate.weight.t(), -1).topk(2, dim=-1))  # no renormalisation
    with pytest.raises(ValueError, match="differs from the block by"):
        from_hf(block)
    from_hf(block, verify=False)  # the check can be skipped


@pytest.mark.parametrize("family", list(BLOCKS))
def test_round_trip_writes_changed_weights_back_exactly(family: str) -> None:
    layer = from_hf(make(family, seed=0))
    with torch.no_grad():  # the routers (and everything else) change in gmnn
        for tensor in [*layer.parameters(), *layer.buffers()]:
            tensor.add_(0.1 * torch.randn_like(tensor))
    target = to_hf(layer, make(family, seed=5))
    x, _ = _inputs(3)
    assert (target(x) - layer(x)[0]).abs().max().item() < 1e-5
    back = from_hf(target)
    for name, value in layer.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value, rtol=0, atol=0)


def test_to_hf_refuses_a_layer_of_another_structure() -> None:
    layer = from_hf(make("Qwen3-MoE"))
    with pytest.raises(ValueError, match="Qwen2MoeSparseMoeBlock: cannot write this layer back: shared"):
        to_hf(layer, make("Qwen2-MoE"))
    other_k = from_hf(make("Qwen3-MoE", num_experts_per_tok=2))
    with pytest.raises(ValueError, match="router differs"):
        to_hf(other_k, make("Qwen3-MoE"))
    with pytest.raises(ValueError, match="router differs"):  # renormalised vs not
        to_hf(from_hf(make("Qwen3-MoE-norm")), make("Qwen3-MoE"))


def test_save_pretrained_round_trip_of_a_tiny_model_with_changed_routers(tmp_path) -> None:
    model_config = config("DeepSeek-V3", num_hidden_layers=2, first_k_dense_replace=0, intermediate_size=24,
                          q_lora_rank=None, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=4)
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(model_config).eval()
    blocks = [layer.mlp for layer in model.model.layers]
    assert all(type(b).__name__ == "DeepseekV3MoE" for b in blocks)
    for block in blocks:
        layer = from_hf(block)
        with torch.no_grad():
            layer.router.weight.add_(torch.randn_like(layer.router.weight))
            layer.router.selection_bias.add_(0.1 * torch.randn_like(layer.router.selection_bias))
        to_hf(layer, block)
    ids = torch.randint(0, model_config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)
    for block, again in zip(blocks, (layer.mlp for layer in reloaded.model.layers)):
        torch.testing.assert_close(again.gate.e_score_correction_bias, block.gate.e_score_correction_bias, rtol=0, atol=0)
