"""Convert Hugging Face sparse MoE blocks (Mixtral, Qwen2-MoE and alike) into a gmnn :class:`~gmnn.nn.MoELayer`.

``from_hf(model.model.layers[i].mlp)`` copies the router, the experts and,
where the block has them, the shared expert and its sigmoid gate, so that the
routing of a real checkpoint can be studied with gmnn's records and metrics.
transformers itself is not imported: the block is read by its attributes.
Both layouts are read: transformers 5 (fused ``experts.gate_up_proj [E, 2I, D]``
and ``experts.down_proj [E, D, I]``, ``gate.weight [E, D]``) and the per-expert
``nn.ModuleList`` of transformers 4 (Mixtral ``w1`` / ``w3`` / ``w2``, Qwen
``gate_proj`` / ``up_proj`` / ``down_proj``). Mixtral's input jitter
(``router_jitter_noise``, training only) is not reproduced.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gmnn.nn.moe.experts import MLPExperts, SharedExperts
from gmnn.nn.moe.layer import MoELayer
from gmnn.nn.moe.routers import SoftmaxTopKRouter

_ACTIVATIONS = {"SiLUActivation": "silu", "SiLU": "silu", "GELUActivation": "gelu", "GELU": "gelu", "ReLU": "relu"}


def _activation(act_fn: nn.Module) -> str:
    name = type(act_fn).__name__
    if name not in _ACTIVATIONS or getattr(act_fn, "approximate", "none") != "none":
        raise ValueError(f"unsupported expert activation {act_fn!r}: allowed {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _router_weight(gate: nn.Module) -> Tensor:
    if getattr(gate, "bias", None) is not None:
        raise ValueError("router gates with a bias are not supported")
    return gate.weight


def _expert_weights(experts: nn.Module) -> tuple[Tensor, Tensor, nn.Module]:
    """``(w1 [E, 2I, D] gate rows then up rows, w2 [E, D, I], act_fn)`` of fused or per-expert layouts."""
    if hasattr(experts, "gate_up_proj"):
        return experts.gate_up_proj, experts.down_proj, experts.act_fn
    first = experts[0]
    names = ("w1", "w3", "w2") if hasattr(first, "w1") else ("gate_proj", "up_proj", "down_proj")
    gate, up, down = ([getattr(e, name).weight for e in experts] for name in names)
    w1 = torch.stack([torch.cat([g, u]) for g, u in zip(gate, up)])
    return w1, torch.stack(down), first.act_fn


def _top_k(block: nn.Module) -> int:
    for owner in (block, block.gate):
        if getattr(owner, "top_k", None) is not None:
            return int(owner.top_k)
    raise ValueError("cannot find the block's top_k")


def _normalize(block: nn.Module) -> bool:
    for owner in (block.gate, block):
        if hasattr(owner, "norm_topk_prob"):
            return bool(owner.norm_topk_prob)
    return True  # Mixtral renormalises the top-k probabilities


def _shared(block: nn.Module) -> SharedExperts | None:
    mlp = getattr(block, "shared_expert", None)
    if mlp is None:
        return None
    gate = getattr(block, "shared_expert_gate", None)
    hidden, d_model = mlp.gate_proj.weight.shape
    shared = SharedExperts(d_model, hidden, 1, _activation(mlp.act_fn), gated=True, bias=False, gate=gate is not None)
    with torch.no_grad():
        shared.mlp.w1.copy_(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).unsqueeze(0))
        shared.mlp.w2.copy_(mlp.down_proj.weight.unsqueeze(0))
        if gate is not None:
            shared.gate.weight.copy_(gate.weight)
    return shared


def from_hf(block: nn.Module, balance_weight: float = 0.0, z_weight: float = 0.0, **layer_kwargs) -> MoELayer:
    """A :class:`~gmnn.nn.MoELayer` with the weights of a Hugging Face sparse MoE block (copied, same dtype and device).

    Softmax top-k router without bias (``normalize`` from ``norm_topk_prob``,
    renormalised for Mixtral), SwiGLU experts without bias, and the shared
    expert with its sigmoid gate for Qwen2-MoE-style blocks.

    Args:
        block: E.g. ``MixtralSparseMoeBlock`` or ``Qwen2MoeSparseMoeBlock``.
        balance_weight: Weight of the layer's load-balancing loss (HF applies its own at model level).
        z_weight: Weight of the layer's z-loss.
        layer_kwargs: Further :class:`~gmnn.nn.MoELayer` keywords (e.g. ``capacity_factor``).

    Raises:
        ValueError: The block's layout or activation is not one of the supported ones.
    """
    if not hasattr(block, "gate") or not hasattr(block, "experts"):
        raise ValueError(f"block must have a `gate` router and `experts`, got {type(block).__name__}")
    router_weight = _router_weight(block.gate)
    w1, w2, act_fn = _expert_weights(block.experts)
    num_experts, d_model = router_weight.shape
    router = SoftmaxTopKRouter(d_model, num_experts, _top_k(block), normalize=_normalize(block))
    experts = MLPExperts(d_model, w2.shape[-1], num_experts, _activation(act_fn), gated=True, bias=False)
    with torch.no_grad():
        router.weight.copy_(router_weight)
        experts.w1.copy_(w1)
        experts.w2.copy_(w2)
    layer = MoELayer(router=router, experts=experts, shared=_shared(block), balance_weight=balance_weight,
                     z_weight=z_weight, **layer_kwargs)
    return layer.to(device=router_weight.device, dtype=router_weight.dtype)
