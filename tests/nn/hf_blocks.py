"""Tiny randomly initialised Hugging Face MoE blocks, one per family, built from local configs (no download)."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

D = 16  # hidden size of every block

# family -> (module, config class, block class, config keywords)
BLOCKS: dict[str, tuple[str, str, str, dict]] = {
    "Mixtral": ("mixtral", "MixtralConfig", "MixtralSparseMoeBlock",
                {"intermediate_size": 24, "num_local_experts": 6, "num_experts_per_tok": 2}),
    "MiniMax": ("minimax", "MiniMaxConfig", "MiniMaxSparseMoeBlock",
                {"intermediate_size": 24, "num_local_experts": 6, "num_experts_per_tok": 2}),
    "Qwen2-MoE": ("qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeSparseMoeBlock",
                  {"moe_intermediate_size": 8, "shared_expert_intermediate_size": 24, "num_experts": 8,
                   "num_experts_per_tok": 3, "norm_topk_prob": False}),
    "Qwen3-MoE": ("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeSparseMoeBlock",
                  {"moe_intermediate_size": 8, "num_experts": 8, "num_experts_per_tok": 3, "norm_topk_prob": False}),
    "Qwen3-MoE-norm": ("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeSparseMoeBlock",
                       {"moe_intermediate_size": 8, "num_experts": 8, "num_experts_per_tok": 3, "norm_topk_prob": True}),
    "Qwen3-Next": ("qwen3_next", "Qwen3NextConfig", "Qwen3NextSparseMoeBlock",
                   {"moe_intermediate_size": 8, "shared_expert_intermediate_size": 12, "num_experts": 8,
                    "num_experts_per_tok": 2, "norm_topk_prob": True}),
    "OLMoE": ("olmoe", "OlmoeConfig", "OlmoeSparseMoeBlock",
              {"intermediate_size": 8, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": False}),
    "FlexOlmo": ("flex_olmo", "FlexOlmoConfig", "FlexOlmoSparseMoeBlock",
                 {"intermediate_size": 8, "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True}),
    "Jamba": ("jamba", "JambaConfig", "JambaSparseMoeBlock",
              {"intermediate_size": 8, "num_experts": 6, "num_experts_per_tok": 2}),
    "GraniteMoE": ("granitemoe", "GraniteMoeConfig", "GraniteMoeMoE",
                   {"intermediate_size": 8, "num_local_experts": 6, "num_experts_per_tok": 2}),
    "GraniteMoE-Shared": ("granitemoeshared", "GraniteMoeSharedConfig", "GraniteMoeSharedMoE",
                          {"intermediate_size": 8, "num_local_experts": 6, "num_experts_per_tok": 2}),
    "GraniteMoE-Hybrid": ("granitemoehybrid", "GraniteMoeHybridConfig", "GraniteMoeHybridMoE",
                          {"intermediate_size": 8, "num_local_experts": 6, "num_experts_per_tok": 2,
                           "mamba_n_heads": 4, "mamba_d_head": 8}),
    "Hunyuan-MoE": ("hunyuan_v1_moe", "HunYuanMoEV1Config", "HunYuanMoEV1Moe",
                    {"intermediate_size": 12, "num_experts": 6, "moe_topk": 2}),
    "ERNIE-4.5-MoE": ("ernie4_5_moe", "Ernie4_5_MoeConfig", "Ernie4_5_MoeSparseMoeBlock",
                      {"moe_intermediate_size": 8, "moe_num_experts": 6, "moe_k": 2, "moe_num_shared_experts": 2,
                       "use_bias": True}),
    "DeepSeek-V2": ("deepseek_v2", "DeepseekV2Config", "DeepseekV2Moe",
                    {"moe_intermediate_size": 8, "n_routed_experts": 8, "num_experts_per_tok": 3, "n_shared_experts": 2,
                     "routed_scaling_factor": 1.5, "topk_method": "group_limited_greedy", "n_group": 4,
                     "topk_group": 2}),
    "DeepSeek-V2-greedy": ("deepseek_v2", "DeepseekV2Config", "DeepseekV2Moe",
                           {"moe_intermediate_size": 8, "n_routed_experts": 6, "num_experts_per_tok": 2,
                            "n_shared_experts": 1, "routed_scaling_factor": 1.0, "topk_method": "greedy"}),
    "DeepSeek-V3": ("deepseek_v3", "DeepseekV3Config", "DeepseekV3MoE",
                    {"moe_intermediate_size": 8, "n_routed_experts": 8, "num_experts_per_tok": 3, "n_shared_experts": 1,
                     "routed_scaling_factor": 2.5, "n_group": 4, "topk_group": 2, "norm_topk_prob": True}),
    "GLM-4-MoE": ("glm4_moe", "Glm4MoeConfig", "Glm4MoeMoE",
                  {"moe_intermediate_size": 8, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
                   "routed_scaling_factor": 1.5, "n_group": 2, "topk_group": 1, "norm_topk_prob": False}),
    "dots1": ("dots1", "Dots1Config", "Dots1MoE",
              {"moe_intermediate_size": 8, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
               "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1, "norm_topk_prob": True}),
}

REFUSED_BLOCKS: dict[str, tuple[str, str, str, dict]] = {
    "PhiMoE": ("phimoe", "PhimoeConfig", "PhimoeSparseMoeBlock", {"intermediate_size": 8, "num_local_experts": 4}),
    "GPT-OSS": ("gpt_oss", "GptOssConfig", "GptOssMLP", {"intermediate_size": 8, "num_local_experts": 4,
                                                          "num_experts_per_tok": 2}),
    "JetMoE": ("jetmoe", "JetMoeConfig", "JetMoeMoE", {"intermediate_size": 8, "num_local_experts": 4,
                                                       "num_experts_per_tok": 2}),
    "Llama 4": ("llama4", "Llama4TextConfig", "Llama4TextMoe", {"intermediate_size": 8, "num_local_experts": 4}),
}


def _randomised(block: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*block.parameters(), *block.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=generator))
    return block


def config(family: str, table: dict = BLOCKS, **overrides):
    module, config_name, _, kwargs = table[family]
    models = importlib.import_module(f"transformers.models.{module}")
    small = {"num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 64}
    return getattr(models, config_name)(hidden_size=D, **{**small, **kwargs, **overrides})


def block_class(family: str, table: dict = BLOCKS) -> Callable[..., nn.Module]:
    module, _, class_name, _ = table[family]
    return getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), class_name)


def make(family: str, seed: int = 0, table: dict = BLOCKS, **overrides) -> nn.Module:
    """A block of ``family`` with random weights (selection biases and ERNIE's statics included)."""
    torch.manual_seed(seed)
    return _randomised(block_class(family, table)(config(family, table, **overrides)), seed)


class PerExpertMLP(nn.Module):
    """Expert ``e`` of fused experts (``gate_up_proj [E, 2I, D]``, ``down_proj [E, D, I]``) as one module of
    transformers 4's per-expert list; ``names`` are its gate, up and down ``Linear`` s: Mixtral's
    ``("w1", "w3", "w2")`` or ``("gate_proj", "up_proj", "down_proj")``."""

    def __init__(self, experts: nn.Module, e: int, names: tuple[str, str, str] = ("w1", "w3", "w2")) -> None:
        super().__init__()
        hidden = experts.down_proj.shape[-1]
        weights = (experts.gate_up_proj[e, :hidden], experts.gate_up_proj[e, hidden:], experts.down_proj[e])
        for name, weight in zip(names, weights):
            linear = nn.Linear(1, 1, bias=False)
            linear.weight = nn.Parameter(weight.detach().clone())
            setattr(self, name, linear)
        self.act_fn = experts.act_fn


def transformers4_block(fused: nn.Module, experts: nn.Module) -> nn.Module:
    """transformers 4's ``MixtralSparseMoeBlock`` (a ``Linear`` gate with ``fused``'s weights, ``top_k = 2`` on the
    block) around ``experts``; a stand-in without a forward (convert it with ``verify=False``)."""
    old = type("MixtralSparseMoeBlock", (nn.Module,), {})()
    old.gate = nn.Linear(D, fused.gate.weight.shape[0], bias=False)
    old.gate.weight = nn.Parameter(fused.gate.weight.detach().clone())
    old.experts = experts
    old.top_k = 2
    return old
