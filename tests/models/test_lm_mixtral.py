"""MoETransformerLM with Mixtral's options is MixtralForCausalLM layer for layer, and its new options default off."""

from __future__ import annotations

import pytest
import torch

from gmnn.models import MoETransformerLM

transformers = pytest.importorskip("transformers")

MIXTRAL_OPTIONS = dict(expert_type="swiglu", norm="rmsnorm", position="rope", attention_bias=False)


def test_mixtral_options_compute_mixtrals_logits_with_its_weights() -> None:
    torch.manual_seed(0)
    config = transformers.MixtralConfig(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, num_local_experts=4,
                                        num_experts_per_tok=2, tie_word_embeddings=True, attn_implementation="sdpa")
    hf = transformers.MixtralForCausalLM(config).eval()
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.1)
    lm = MoETransformerLM(input_shape=(16,), num_experts=4, d_model=32, num_layers=2, num_heads=4, expert_hidden=48,
                          k=2, **MIXTRAL_OPTIONS).eval()
    with torch.no_grad():
        lm.embedding.weight.copy_(hf.model.embed_tokens.weight)
        lm.norm.weight.copy_(hf.model.norm.weight)
        for block, layer in zip(lm.blocks, hf.model.layers):
            attention = layer.self_attn
            block.attention.qkv.weight.copy_(torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                                                        attention.v_proj.weight]))
            block.attention.proj.weight.copy_(attention.o_proj.weight)
            block.norm1.weight.copy_(layer.input_layernorm.weight)
            block.norm2.weight.copy_(layer.post_attention_layernorm.weight)
            block.ffn.router.weight.copy_(layer.mlp.gate.weight)
            block.ffn.router.bias.zero_()
            block.ffn.experts.w1.copy_(layer.mlp.experts.gate_up_proj)
            block.ffn.experts.w2.copy_(layer.mlp.experts.down_proj)
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(lm(tokens)[0], hf(input_ids=tokens).logits, rtol=1e-5, atol=1e-5)
    ours = sum(p.numel() for p in lm.parameters())
    assert ours - sum(p.numel() for p in hf.parameters()) == 2 * 4  # the routers' biases only


def test_the_new_options_default_to_the_previous_model() -> None:
    lm = MoETransformerLM(input_shape=(16,), d_model=32, num_heads=2, expert_hidden=64)
    assert lm.hparams.expert_type == "gelu" and lm.hparams.norm == "layernorm" and lm.hparams.position == "learned"
    assert isinstance(lm.norm, torch.nn.LayerNorm) and lm.position is not None
    assert lm.blocks[0].attention.qkv.bias is not None and lm.blocks[0].attention.rope_base is None
    assert not lm.blocks[0].ffn.experts.gated and lm.blocks[0].ffn.experts.b1 is not None


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_swiglu_rope_rmsnorm_trains_a_step(router: str) -> None:
    torch.manual_seed(0)
    lm = MoETransformerLM(input_shape=(16,), d_model=32, num_heads=2, expert_hidden=64, router=router,
                          shared_experts=1, **MIXTRAL_OPTIONS)
    tokens = torch.randint(0, 256, (3, 16))
    logits, aux = lm(tokens)
    assert logits.shape == (3, 16, 256)
    (logits.logsumexp(-1).mean() + aux).backward()
    assert all(p.grad is not None for p in lm.blocks[0].ffn.experts.parameters())
    with pytest.raises(ValueError, match="norm"):
        MoETransformerLM(input_shape=(16,), d_model=32, num_heads=2, norm="batchnorm")
