"""``from_hf`` and ``to_hf``: a Hugging Face MoE block to a gmnn layer and back, exactly or not at all."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gmnn.nn.moe.experts import SharedExperts
from gmnn.nn.moe.hf.families import FAMILIES, REFUSED, Spec
from gmnn.nn.moe.hf.links import Refused
from gmnn.nn.moe.layer import MoELayer
from gmnn.nn.moe.routers import Router

# Router and expert settings that must agree between a layer and the block it is written back into.
_ROUTER_SETTINGS = ("d_model", "num_experts", "k", "normalize", "scale", "num_groups", "topk_groups", "group_score",
                    "norm_min", "noise_std")
_EXPERT_SETTINGS = ("d_model", "hidden", "num_experts", "activation", "gated")


def spec_of(block: nn.Module) -> Spec:
    """The family :class:`~gmnn.nn.moe.hf.families.Spec` of a block, or a one-line ``ValueError`` saying why not."""
    name = type(block).__name__
    if name in REFUSED:
        family, why = REFUSED[name]
        raise Refused(f"{name} ({family}) is refused: {why}")
    if name not in FAMILIES:
        raise Refused(f"{name} is not a Hugging Face MoE block gmnn knows; converted: {', '.join(FAMILIES)}")
    try:
        spec = FAMILIES[name][1](block)
    except AttributeError as error:  # a block of a known name whose layout differs from the installed transformers
        raise Refused(f"{name}: unexpected layout ({error})") from None
    _check_covered(block, spec)
    return spec


def _check_covered(block: nn.Module, spec: Spec) -> None:
    """Every parameter and buffer of the block is read by some link: a tensor gmnn does not map is refused."""
    covered = {id(t) for link in spec.links for t in link.sources}
    tensors = [*block.named_parameters(), *block.named_buffers()]
    missing = [name for name, tensor in tensors if id(tensor) not in covered]
    if missing:
        raise Refused(f"{type(block).__name__}: tensors {missing} have no place in gmnn's layer")


def _build(spec: Spec, **layer_kwargs) -> MoELayer:
    return MoELayer(router=spec.router, experts=spec.experts, shared=spec.shared, **layer_kwargs)


def from_hf(block: nn.Module, balance_weight: float = 0.0, z_weight: float = 0.0, verify: bool = True,
            **layer_kwargs: object) -> MoELayer:
    """A :class:`~gmnn.nn.MoELayer` computing exactly what a Hugging Face MoE block computes (weights copied).

    The families of :data:`~gmnn.nn.moe.hf.families.FAMILIES` convert (the table in
    docs/moe-layer.md); any other block, and a known block with a setting gmnn cannot honour
    or a tensor it has no place for, raises a one-line ``ValueError`` naming the
    class and what is missing. Both the fused experts of transformers 5 and the
    per-expert ``nn.ModuleList`` of transformers 4 are read. The layer takes the
    experts' dtype and device; the router keeps its own dtype (DeepSeek's float32 router).

    Args:
        block: E.g. ``model.model.layers[i].mlp`` of a Mixtral, Qwen-MoE or DeepSeek-V3 model.
        balance_weight: Weight of the layer's load-balancing loss (HF applies its own at model level).
        z_weight: Weight of the layer's z-loss.
        verify: Run the block and the layer on a few random tokens and refuse if they differ
            (float32 / float64 blocks off the meta device; other dtypes are not checked).
        layer_kwargs: Further :class:`~gmnn.nn.MoELayer` keywords (``capacity_factor > 0`` is refused: HF blocks are dropless).

    Raises:
        ValueError: The block is refused (see above).
    """
    spec = spec_of(block)
    if layer_kwargs.get("capacity_factor", 0):
        raise Refused(f"{type(block).__name__}: capacity_factor > 0 drops tokens, the Hugging Face block does not")
    layer = _build(spec, balance_weight=balance_weight, z_weight=z_weight, **layer_kwargs)
    state = {link.name: link.read(lambda t: t.detach()) for link in spec.links}
    experts_param = state["experts.w1"]
    layer = layer.to(device=experts_param.device, dtype=experts_param.dtype)
    layer.router.to(dtype=state["router.weight"].dtype)
    targets = dict(layer.state_dict(keep_vars=True))
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value)
    if verify:
        _verify(block, layer)
    return layer


@torch.no_grad()
def _verify(block: nn.Module, layer: MoELayer) -> None:
    probe = next(block.parameters())
    if probe.device.type == "meta" or probe.dtype not in (torch.float32, torch.float64):
        return
    x = torch.randn(2, 5, layer.d_model, generator=torch.Generator().manual_seed(0), dtype=probe.dtype).to(probe.device)
    expected = block(x)
    expected = expected[0] if isinstance(expected, tuple) else expected
    got = layer(x)[0]
    error = (expected - got).abs().max().item()
    if not error <= 1e-4 * (1 + expected.abs().max().item()):
        raise Refused(f"{type(block).__name__}: the converted layer differs from the block by {error:.1e} on random "
                      "tokens (this transformers version computes something gmnn does not)")


def _settings(module: nn.Module | None, names: tuple[str, ...]) -> dict:
    if module is None:
        return {}
    found = {name: getattr(module, name, None) for name in names}
    found["kind"] = type(module).__name__
    found["selection_bias"] = getattr(module, "selection_bias", None) is not None
    found["bias"] = getattr(module, "bias", None) is not None or getattr(module, "b1", None) is not None
    return found


def _shared_settings(shared: SharedExperts | None) -> dict:
    if shared is None:
        return {}
    return {**_settings(shared.mlp, _EXPERT_SETTINGS), "gate": shared.gate is not None}


def _mismatch(layer: MoELayer, reference: MoELayer) -> str | None:
    if layer.capacity_factor > 0:
        return "capacity_factor > 0 (the Hugging Face block is dropless)"
    parts = [("router", _settings(layer.router, _ROUTER_SETTINGS), _settings(reference.router, _ROUTER_SETTINGS)),
             ("experts", _settings(layer.experts, _EXPERT_SETTINGS), _settings(reference.experts, _EXPERT_SETTINGS)),
             ("shared", _shared_settings(layer.shared), _shared_settings(reference.shared))]
    for part, got, wanted in parts:
        differing = {key: (got.get(key), value) for key, value in wanted.items() if got.get(key) != value}
        if set(got) != set(wanted) or differing:
            return f"{part} differs from the block's family ({differing or 'present vs absent'}: (layer, block))"
    return None


def to_hf(layer: MoELayer, block: nn.Module) -> nn.Module:
    """Write a :class:`~gmnn.nn.MoELayer`'s weights back into a Hugging Face block of the same family (in place).

    The layer must have the structure :func:`from_hf` gives for that block
    (same router kind and settings, expert shapes and activation, shared
    experts); trained weights, the router included, are copied, so the model
    holding ``block`` can be saved with ``save_pretrained`` and reloaded by
    transformers with the layer's outputs.

    Args:
        layer: A layer made by :func:`from_hf` (then trained or edited) or built alike.
        block: The Hugging Face block to overwrite.

    Returns:
        ``block``.

    Raises:
        ValueError: The block is refused by :func:`from_hf`, or the layer's structure differs from its family's.
        TypeError: ``layer`` is not a :class:`~gmnn.nn.MoELayer`.
    """
    if not isinstance(layer, MoELayer) or not isinstance(layer.router, Router):
        raise TypeError(f"layer must be a gmnn MoELayer, got {type(layer).__name__}")
    spec = spec_of(block)
    reason = _mismatch(layer, _build(spec))
    if reason is not None:
        raise Refused(f"{type(block).__name__}: cannot write this layer back: {reason}")
    state = layer.state_dict()
    with torch.no_grad():
        for link in spec.links:
            value: Tensor = state[link.name]
            link.write(value.to(link.sources[0].dtype))
    return block


__all__ = ["from_hf", "spec_of", "to_hf"]
