"""Links between a gmnn layer's tensors and a Hugging Face block's: read, write, and the shared parts of every family.

A :class:`Link` ties one entry of a :class:`~gmnn.nn.MoELayer` state dict
(``"router.weight"``, ``"experts.w1"``, ``"shared.mlp.b1"`` ...) to the
Hugging Face tensors it is made of, with the reshaping both ways. The same
links copy weights in (:func:`~gmnn.nn.moe.hf.from_hf`), write them back
(:func:`~gmnn.nn.moe.hf.to_hf`) and map gradients in the parity tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gmnn.nn.moe.experts import MLPExperts, SharedExperts

Getter = Callable[[Tensor], Tensor]

# Hugging Face activation modules (transformers.activations.ACT2FN) gmnn reproduces exactly.
ACTIVATIONS = {"SiLUActivation": "silu", "SiLU": "silu", "GELUActivation": "gelu", "GELU": "gelu",
               "GELUTanh": "gelu_tanh", "ReLU": "relu"}


class Refused(ValueError):
    """A block gmnn cannot represent exactly (a ``ValueError`` with one line naming the class and what is missing)."""


@dataclass
class Link:
    """One gmnn state-dict entry and the Hugging Face tensors it is made of.

    Attributes:
        name: Key in the gmnn layer's state dict.
        sources: The Hugging Face parameters / buffers it covers.
        read: ``read(get)`` assembles the gmnn tensor from ``get(source)`` (``get``: identity, or ``.grad``).
        write: Copies a gmnn tensor back into the sources.
    """

    name: str
    sources: tuple[Tensor, ...]
    read: Callable[[Getter], Tensor]
    write: Callable[[Tensor], None]


def same(name: str, tensor: Tensor, shape: tuple[int, ...] | None = None) -> Link:
    """A link to one tensor, reshaped to ``shape`` on the gmnn side (e.g. ERNIE's ``[1, E]`` bias to ``[E]``)."""
    gmnn_shape = tuple(tensor.shape) if shape is None else shape

    def write(value: Tensor) -> None:
        tensor.copy_(value.reshape(tensor.shape))
    return Link(name, (tensor,), lambda get: get(tensor).reshape(gmnn_shape), write)


def stacked(name: str, parts: list[Tensor], shape: tuple[int, ...]) -> Link:
    """A link to tensors concatenated along the first axis, then viewed as ``shape`` (gate and up rows; experts)."""
    sizes = [p.shape[0] for p in parts]

    def write(value: Tensor) -> None:
        for part, piece in zip(parts, value.reshape(sum(sizes), *parts[0].shape[1:]).split(sizes)):
            part.copy_(piece.reshape(part.shape))
    return Link(name, tuple(parts), lambda get: torch.cat([get(p) for p in parts]).reshape(shape), write)


def activation(owner: str, act_fn: nn.Module) -> str:
    """The gmnn name of a Hugging Face activation module, or :class:`Refused`."""
    name = type(act_fn).__name__
    if name not in ACTIVATIONS or getattr(act_fn, "approximate", "none") != "none":
        raise Refused(f"{owner}: expert activation {name} has no exact gmnn equivalent (gmnn has {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def routed_experts(owner: str, experts: nn.Module) -> tuple[MLPExperts, list[Link]]:
    """GLU experts of the fused layout (``gate_up_proj [E, 2I, D]``, ``down_proj [E, D, I]``) or a per-expert list."""
    if hasattr(experts, "gate_up_proj"):
        if getattr(experts, "is_transposed", False) or getattr(experts, "has_bias", False):
            raise Refused(f"{owner}: transposed or biased fused experts are not read by gmnn")
        num_experts, two_hidden, d_model = experts.gate_up_proj.shape
        hidden = two_hidden // 2
        if tuple(experts.down_proj.shape) != (num_experts, d_model, hidden):
            raise Refused(f"{owner}: down_proj of shape {tuple(experts.down_proj.shape)} is not [E, D, I]")
        module = MLPExperts(d_model, hidden, num_experts, activation(owner, experts.act_fn), gated=True, bias=False)
        return module, [same("experts.w1", experts.gate_up_proj), same("experts.w2", experts.down_proj)]
    if not isinstance(experts, nn.ModuleList) or len(experts) == 0:
        raise Refused(f"{owner}: experts of type {type(experts).__name__} are neither fused nor a per-expert list")
    first = experts[0]
    names = ("w1", "w3", "w2") if hasattr(first, "w1") else ("gate_proj", "up_proj", "down_proj")
    if not all(hasattr(first, n) for n in names):
        raise Refused(f"{owner}: per-expert modules of type {type(first).__name__} are not gated MLPs")
    hidden, d_model = getattr(first, names[0]).weight.shape
    num_experts = len(experts)
    module = MLPExperts(d_model, hidden, num_experts, activation(owner, first.act_fn), gated=True, bias=False)
    gate_up = [t for e in experts for t in (getattr(e, names[0]).weight, getattr(e, names[1]).weight)]
    down = [getattr(e, names[2]).weight for e in experts]
    return module, [stacked("experts.w1", gate_up, (num_experts, 2 * hidden, d_model)),
                    stacked("experts.w2", down, (num_experts, d_model, hidden))]


def shared_mlp(owner: str, mlp: nn.Module, gate: nn.Linear | None = None) -> tuple[SharedExperts, list[Link]]:
    """A gated MLP (``gate_proj`` / ``up_proj`` / ``down_proj``, biases optional) as one shared expert, with its sigmoid gate."""
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        raise Refused(f"{owner}: shared expert of type {type(mlp).__name__} is not a gated MLP")
    hidden, d_model = mlp.gate_proj.weight.shape
    biased = [getattr(mlp, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")]
    if any(biased) and not all(biased):
        raise Refused(f"{owner}: shared expert with biases on some of its projections only")
    if gate is not None and (gate.bias is not None or gate.weight.shape != (1, d_model)):
        raise Refused(f"{owner}: shared expert gate must be a bias-free Linear(d_model, 1)")
    module = SharedExperts(d_model, hidden, 1, activation(owner, mlp.act_fn), gated=True, bias=all(biased),
                           gate=gate is not None)
    links = [stacked("shared.mlp.w1", [mlp.gate_proj.weight, mlp.up_proj.weight], (1, 2 * hidden, d_model)),
             same("shared.mlp.w2", mlp.down_proj.weight, (1, d_model, hidden))]
    if all(biased):
        links += [stacked("shared.mlp.b1", [mlp.gate_proj.bias, mlp.up_proj.bias], (1, 2 * hidden)),
                  same("shared.mlp.b2", mlp.down_proj.bias, (1, d_model))]
    if gate is not None:
        links.append(same("shared.gate.weight", gate.weight))
    return module, links
