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
import torch.nn.functional as F
from torch import Tensor, nn

from gmnn.nn.moe.hf.families import FAMILIES, deepseek_v3
from gmnn.nn.moe.layer import MoELayer
from gmnn.nn.moe.record import Routing

MODEL_LAYER = "gate"  # the name of a whole gmnn image model's routing (its gate)

#: Hugging Face blocks whose router scores are sigmoids of the logits (DeepSeek-V3, GLM-4-MoE, dots1): the
#: families that ``gmnn.nn.from_hf`` converts to a :class:`~gmnn.nn.moe.routers.SigmoidRouter`.
SIGMOID_BLOCKS = frozenset(name for name, (_, convert) in FAMILIES.items() if convert is deepseek_v3)


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


def routing_from_output(module: nn.Module, output: Any, num_experts: int, top_k: int | None = None,
                        scores: str = "softmax") -> Routing | None:
    """The :class:`Routing` of one call of a hooked module (gmnn layer, HF router, gmnn model), detached.

    A Hugging Face router returns its logits ``[T, E]``, in transformers 5 followed by the combine weights and
    the chosen experts ``[T, k]`` (recorded as they are: the top-1 is the chosen expert of highest weight, never
    the first column). A router that returns only logits (e.g. a ``Linear`` gate) selects its ``top_k`` most
    probable. ``probs`` are ``softmax(logits)``, or with ``scores="sigmoid"`` (:data:`SIGMOID_BLOCKS`) the sigmoid
    scores normalised per token, computed as ``softmax(logsigmoid(logits))``.
    """
    if isinstance(module, MoELayer):
        return module.last_routing
    if hasattr(output, "gate_probs"):  # a gmnn image model's MoEOutput
        return Routing(probs=output.gate_probs.detach(), selected=None if output.selected is None else output.selected.detach(),
                       logits=None if output.gate_logits is None else output.gate_logits.detach(),
                       dropped=None if output.dropped is None else output.dropped.detach())
    items = output if isinstance(output, (tuple, list)) else (output,)
    tensors = [t for t in items if isinstance(t, Tensor)]
    found = next((t for t in tensors if t.is_floating_point() and t.shape[-1] == num_experts), None)
    if found is None:
        return None
    logits = found.detach().reshape(-1, num_experts).float()
    chosen = next((t for t in tensors if not t.is_floating_point() and t.dim() >= 2 and t.numel() % logits.shape[0] == 0), None)
    weights = None
    if chosen is not None:
        selected = chosen.detach().reshape(logits.shape[0], -1).long()
        weights = next((t.detach().reshape(selected.shape).float() for t in tensors
                        if t is not found and t.is_floating_point() and t.numel() == selected.numel()), None)
    scored = F.logsigmoid(logits) if scores == "sigmoid" else logits
    probs = torch.softmax(scored, dim=-1)
    if chosen is None:
        selected = logits.topk(min(top_k or _top_k_of(module), num_experts), dim=-1).indices
    return Routing(probs=probs, selected=selected, weights=weights, logits=logits)


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
            block = blocks.get(name, module)
            top_k = _top_k_of(block, _top_k_of(module))
            scores = "sigmoid" if type(block).__name__ in SIGMOID_BLOCKS else "softmax"
            self.handles.append(module.register_forward_hook(self._hook(name, experts, top_k, scores)))

    def _hook(self, name: str, experts: int, top_k: int, scores: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            routing = routing_from_output(module, output, experts, top_k, scores)
            if routing is not None:
                self.records[name] = routing
        return hook

    def clear(self) -> None:
        self.records = {}

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()


