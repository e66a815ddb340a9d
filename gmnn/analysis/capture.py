"""Finding the MoE layers of a model and recording their routing on every forward call.

Works on gmnn's :class:`~gmnn.nn.MoELayer` (its ``last_routing`` record), Hugging Face MoE blocks
(a forward hook on their router: Mixtral, Qwen-MoE, OLMoE, ... whose ``gate``/``router`` returns the
router logits, optionally with the chosen experts) and gmnn's image variants (the
``MoEOutput.gate_probs`` of the whole model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gmnn.nn.moe.layer import MoELayer
from gmnn.nn.moe.record import Routing

MODEL_LAYER = "gate"  # the name of a whole gmnn image model's routing (its gate)


def _router_of(module: nn.Module) -> tuple[nn.Module, int] | None:
    """A Hugging Face style block's router and its number of experts (``gate``/``router`` beside ``experts``)."""
    if not isinstance(getattr(module, "experts", None), nn.Module):
        return None
    for name in ("gate", "router"):
        router = getattr(module, name, None)
        router = getattr(router, "classifier", router)  # Switch Transformers: router.classifier is the Linear
        weight = getattr(router, "weight", None)
        if isinstance(router, nn.Module) and isinstance(weight, Tensor) and weight.dim() == 2:
            return router, weight.shape[0]
    return None


def find_moe_layers(model: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """Every MoE layer of ``model`` by module name: ``{name: (module to hook, num_experts)}``.

    gmnn ``MoELayer``s first, then Hugging Face blocks (their router module);
    a model with neither that has ``num_experts`` (a gmnn image variant) is
    one layer named ``"gate"``, read from its ``MoEOutput``.
    """
    found: dict[str, tuple[nn.Module, int]] = {}
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        entry = (module, module.num_experts) if isinstance(module, MoELayer) else _router_of(module)
        if entry is not None:
            found[name] = entry
            inside.append(name)
    if not found and isinstance(getattr(model, "num_experts", None), int):
        found[MODEL_LAYER] = (model, model.num_experts)
    return found


def _top_k_of(module: nn.Module, default: int = 1) -> int:
    found = [getattr(module, name, None) for name in ("top_k", "num_experts_per_tok", "k")]
    return next((value for value in found if isinstance(value, int)), default)


def routing_from_output(module: nn.Module, output: Any, num_experts: int, top_k: int | None = None) -> Routing | None:
    """The :class:`Routing` of one call of a hooked module (gmnn layer, HF router, gmnn model), detached.

    A router that returns only logits (e.g. a ``Linear`` gate) selects its ``top_k`` largest.
    """
    if isinstance(module, MoELayer):
        return module.last_routing
    if hasattr(output, "gate_probs"):  # a gmnn image model's MoEOutput
        return Routing(probs=output.gate_probs.detach(), selected=None if output.selected is None else output.selected.detach(),
                       logits=None if output.gate_logits is None else output.gate_logits.detach(),
                       dropped=None if output.dropped is None else output.dropped.detach())
    items = output if isinstance(output, (tuple, list)) else (output,)
    tensors = [t for t in items if isinstance(t, Tensor)]
    logits = next((t for t in tensors if t.is_floating_point() and t.shape[-1] == num_experts), None)
    if logits is None:
        return None
    logits = logits.detach().reshape(-1, num_experts).float()
    chosen = next((t for t in tensors if not t.is_floating_point() and t.dim() >= 2 and t.numel() % logits.shape[0] == 0), None)
    selected = chosen.detach().reshape(logits.shape[0], -1).long() if chosen is not None else \
        logits.topk(min(top_k or _top_k_of(module), num_experts), dim=-1).indices
    return Routing(probs=torch.softmax(logits, dim=-1), selected=selected, logits=logits)


class RoutingCapture:
    """Forward hooks that keep the routing of the last call of every MoE layer of a model.

    ``records[name]`` is that layer's latest :class:`Routing` (detached);
    :meth:`clear` forgets them, :meth:`remove` takes the hooks off.

    Args:
        model: Any ``nn.Module`` holding MoE layers (see :func:`find_moe_layers`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = find_moe_layers(model)
        self.records: dict[str, Routing] = {}
        self.handles = []
        blocks = dict(model.named_modules())  # an HF layer's name is its block's, which knows top_k
        for name, (module, experts) in self.layers.items():
            top_k = _top_k_of(blocks.get(name, module), _top_k_of(module))
            self.handles.append(module.register_forward_hook(self._hook(name, experts, top_k)))

    def _hook(self, name: str, experts: int, top_k: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            routing = routing_from_output(module, output, experts, top_k)
            if routing is not None:
                self.records[name] = routing
        return hook

    def clear(self) -> None:
        self.records = {}

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()


