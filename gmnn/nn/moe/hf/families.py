"""The Hugging Face MoE block families gmnn converts exactly, and those it refuses, by class name.

Each converted family is one function ``block -> Spec`` that reads only the
attributes its forward uses (those of the installed transformers 5 code) and
builds gmnn modules that compute the same function. A family is found by the
block's class name, never guessed from its attributes; a setting the function
does not know how to honour (e.g. a ``topk_method`` it has not seen) is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from gmnn.nn.moe.experts import MLPExperts, SharedExperts
from gmnn.nn.moe.hf.links import Link, Refused, routed_experts, same, shared_mlp
from gmnn.nn.moe.routers import SigmoidRouter, SoftmaxTopKRouter, TokenChoiceRouter


@dataclass
class Spec:
    """What a block converts to: fresh gmnn modules of the right shapes, and the links to copy weights by."""

    family: str
    router: TokenChoiceRouter
    experts: MLPExperts
    shared: SharedExperts | None
    links: list[Link]


def _owner(block: nn.Module) -> str:
    return type(block).__name__


def _no_jitter(block: nn.Module, attribute: str = "jitter_noise") -> None:
    if getattr(block, attribute, None):
        raise Refused(f"{_owner(block)}: {attribute}={getattr(block, attribute)} multiplies the input by random noise "
                      "while training (gmnn has no input jitter); set it to 0 to convert")


def _assemble(family: str, block: nn.Module, gate: nn.Module, router: TokenChoiceRouter,
              shared: tuple[SharedExperts, list[Link]] | None = None, extra: list[Link] = ()) -> Spec:
    experts, links = routed_experts(_owner(block), block.experts)
    links = [same("router.weight", gate.weight), *extra, *links]
    if shared is not None:
        links += shared[1]
    return Spec(family, router, experts, None if shared is None else shared[0], links)


def _setting(block: nn.Module, name: str):
    """A routing setting of the router (transformers 5) or of the block (transformers 4's ``nn.Linear`` gate)."""
    for owner in (block.gate, block):
        if hasattr(owner, name):
            return getattr(owner, name)
    raise Refused(f"{_owner(block)}: no {name} on the block or its router")


def _softmax(gate: nn.Module, k: int | None = None, **kwargs) -> SoftmaxTopKRouter:
    num_experts, d_model = gate.weight.shape
    return SoftmaxTopKRouter(d_model, num_experts, int(gate.top_k if k is None else k), **kwargs)


def mixtral(block: nn.Module) -> Spec:
    """Mixtral (Jiang et al., 2024) and MiniMax: softmax top-k, renormalised; no shared expert."""
    _no_jitter(block)
    return _assemble("Mixtral", block, block.gate, _softmax(block.gate, _setting(block, "top_k"), normalize=True))


def qwen(block: nn.Module) -> Spec:
    """Qwen2-MoE / Qwen3-MoE / Qwen3-Next / OLMoE / FlexOlmo: softmax top-k, renormalised if ``norm_topk_prob``;
    Qwen2-MoE and Qwen3-Next add a shared expert scaled by a sigmoid gate."""
    gate = block.gate
    router = _softmax(gate, _setting(block, "top_k"), normalize=bool(_setting(block, "norm_topk_prob")))
    shared = None
    if hasattr(block, "shared_expert"):
        shared = shared_mlp(_owner(block), block.shared_expert, block.shared_expert_gate)
    return _assemble("Qwen-MoE", block, gate, router, shared)


def unnormalised(block: nn.Module) -> Spec:
    """Jamba (Lieber et al., 2024): softmax top-k, weights not renormalised."""
    return _assemble("Jamba", block, block.router, _softmax(block.router, normalize=False))


def granite(block: nn.Module) -> Spec:
    """GraniteMoE (+Shared, +Hybrid): softmax over the top-k logits, i.e. the renormalised top-k softmax.

    The shared MLP of GraniteMoE-Shared / -Hybrid sits in the decoder layer, outside this block.
    """
    return _assemble("GraniteMoE", block, block.router, _softmax(block.router, normalize=True))


def hunyuan(block: nn.Module) -> Spec:
    """Hunyuan-MoE: softmax top-k renormalised (router ``gate.wg``), plus an always-on shared MLP."""
    gate = block.gate
    router = SoftmaxTopKRouter(gate.wg.in_features, gate.wg.out_features, int(gate.top_k), normalize=True)
    if gate.wg.bias is not None:
        raise Refused(f"{_owner(block)}: router gate.wg with a bias")
    return _assemble("Hunyuan-MoE", block, gate.wg, router, shared_mlp(_owner(block), block.shared_mlp))


def ernie(block: nn.Module) -> Spec:
    """ERNIE 4.5 MoE: softmax scores, selection on scores + ``moe_statics`` bias, weights renormalised
    with the normaliser clamped at ``moe_norm_min``; optional shared experts (with biases if ``use_bias``)."""
    gate = block.gate
    bias = gate.moe_statics.e_score_correction_bias
    num_experts, d_model = gate.weight.shape
    if bias.shape != (1, num_experts):
        raise Refused(f"{_owner(block)}: moe_statics bias of shape {tuple(bias.shape)} (gmnn reads one group [1, E])")
    router = SoftmaxTopKRouter(d_model, num_experts, int(gate.top_k), normalize=True, score_bias=True,
                               norm_min=float(gate.norm_min))
    shared = None if block.shared_experts is None else shared_mlp(_owner(block), block.shared_experts)
    return _assemble("ERNIE-4.5-MoE", block, gate, router, shared,
                     extra=[same("router.selection_bias", bias, (num_experts,))])


def deepseek_v2(block: nn.Module) -> Spec:
    """DeepSeek-V2 (DeepSeek-AI, 2024): softmax top-k times ``routed_scaling_factor``, not renormalised;
    ``topk_method="group_limited_greedy"`` is device-limited routing (a group scores its best expert); shared experts."""
    gate = block.gate
    num_experts, d_model = gate.weight.shape
    if gate.topk_method == "greedy":
        groups = {}
    elif gate.topk_method == "group_limited_greedy":
        groups = {"num_groups": int(gate.num_group), "topk_groups": int(gate.topk_group), "group_score": "max"}
    else:
        raise Refused(f"{_owner(block)}: topk_method={gate.topk_method!r} (gmnn knows 'greedy', 'group_limited_greedy')")
    router = SoftmaxTopKRouter(d_model, num_experts, int(gate.top_k), normalize=False,
                               scale=float(gate.routed_scaling_factor), **groups)
    return _assemble("DeepSeek-V2", block, gate, router, shared_mlp(_owner(block), block.shared_experts))


def deepseek_v3(block: nn.Module) -> Spec:
    """DeepSeek-V3 (DeepSeek-AI, 2024), GLM-4-MoE, dots1: sigmoid scores, selection on scores + score-correction
    bias within the ``topk_group`` best of ``n_group`` groups (a group scores its two best), weights renormalised
    if ``norm_topk_prob``, times ``routed_scaling_factor``; shared experts."""
    gate = block.gate
    num_experts, d_model = gate.weight.shape
    router = SigmoidRouter(d_model, num_experts, int(gate.top_k), normalize=bool(gate.norm_topk_prob),
                           scale=float(gate.routed_scaling_factor), num_groups=int(gate.num_group),
                           topk_groups=int(gate.topk_group), group_score="top2", score_bias=True)
    return _assemble("DeepSeek-V3", block, gate, router, shared_mlp(_owner(block), block.shared_experts),
                     extra=[same("router.selection_bias", gate.e_score_correction_bias)])


# Block class name -> (family shown in the table, converter).
FAMILIES: dict[str, tuple[str, Callable[[nn.Module], Spec]]] = {
    "MixtralSparseMoeBlock": ("Mixtral", mixtral),
    "MiniMaxSparseMoeBlock": ("MiniMax", mixtral),
    "Qwen2MoeSparseMoeBlock": ("Qwen2-MoE", qwen),
    "Qwen3MoeSparseMoeBlock": ("Qwen3-MoE", qwen),
    "Qwen3NextSparseMoeBlock": ("Qwen3-Next", qwen),
    "OlmoeSparseMoeBlock": ("OLMoE", qwen),
    "FlexOlmoSparseMoeBlock": ("FlexOlmo", qwen),
    "JambaSparseMoeBlock": ("Jamba", unnormalised),
    "GraniteMoeMoE": ("GraniteMoE", granite),
    "GraniteMoeSharedMoE": ("GraniteMoE-Shared", granite),
    "GraniteMoeHybridMoE": ("GraniteMoE-Hybrid", granite),
    "HunYuanMoEV1Moe": ("Hunyuan-MoE", hunyuan),
    "Ernie4_5_MoeSparseMoeBlock": ("ERNIE-4.5-MoE", ernie),
    "DeepseekV2Moe": ("DeepSeek-V2", deepseek_v2),
    "DeepseekV3MoE": ("DeepSeek-V3", deepseek_v3),
    "Glm4MoeMoE": ("GLM-4-MoE", deepseek_v3),
    "Dots1MoE": ("dots1", deepseek_v3),
}

# Block class name -> (family, what gmnn lacks to represent it exactly).
REFUSED: dict[str, tuple[str, str]] = {
    "PhimoeSparseMoeBlock": ("PhiMoE", "sparsemixer routing (masked-softmax top-2 with a jitter threshold) has no gmnn router"),
    "GptOssMLP": ("GPT-OSS", ("clamped SwiGLU experts (sigmoid(alpha x), limit, up + 1) with interleaved gate/up "
                              "rows have no gmnn expert")),
    "DbrxFFN": ("DBRX", ("its flattened expert layout, p-norm renormalisation of the top-k weights and router "
                         "input jitter are not read by gmnn")),
    "JetMoeMoE": ("JetMoE", "a learned bias added to the mixed output (MoELayer has no output bias)"),
    "Llama4TextMoe": ("Llama 4", "router scores scale the expert input (sigmoid of the top-k logits), not the output"),
    "SwitchTransformersSparseMLP": ("Switch", "expert capacity drops tokens in sequence order, with router jitter"),
    "NllbMoeSparseMLP": ("NLLB-MoE", "expert capacity with token dropping and a second-expert sampling policy"),
}
