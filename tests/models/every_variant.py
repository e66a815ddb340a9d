"""Every model of ``gmnn.models.__all__`` in each of its routing settings, for tests that must cover them all.

The list of classes is read from ``gmnn.models.__all__``, not kept by hand: a new
variant is tested with its defaults until it gets settings here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import gmnn.models
from gmnn.models import MoEModule, RegressionMoE

E, C = 3, 3  # experts, classes (or regression targets)
COMMON = dict(input_shape=[2], num_classes=C, num_experts=E, expert_hidden=[8], gate_hidden=[8])

# Routing settings per class beyond the defaults: every k of the sparse variants, every gate-gradient mode.
SETTINGS: dict[str, list[dict[str, Any]]] = {
    "TopKMoE": [dict(k=k, gate_gradient=mode) for mode in ("residual", "renormalize", "stochastic")
                for k in range(1, E + 1) if not (mode == "renormalize" and k == 1)],
    "AttentionGateMoE": [dict(k=0)] + [dict(k=k, gate_gradient=mode) for mode in ("residual", "renormalize")
                                       for k in range(1, E + 1) if not (mode == "renormalize" and k == 1)],
    "ProductOfExperts": [dict(gated=True), dict(gated=False)],
    "RegressionMoE": [dict(k=k) for k in range(E + 1)],
    "GatelessMoE": [dict(allocation="loss"), dict(allocation="entropy")],
}


def model_classes() -> list[str]:
    """The names in ``gmnn.models.__all__`` that are LightningModules of gmnn."""
    return [name for name in gmnn.models.__all__
            if isinstance(getattr(gmnn.models, name), type) and issubclass(getattr(gmnn.models, name), MoEModule)]


def cases() -> list[tuple[str, dict[str, Any]]]:
    """``(class name, extra arguments)`` for every class and each of its settings."""
    return [(name, extra) for name in model_classes() for extra in SETTINGS.get(name, [{}])]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, extra = case
    return name + "".join(f"-{key}={value}" for key, value in extra.items())


def build(name: str, extra: dict[str, Any] | None = None, **kwargs: Any) -> MoEModule:
    return getattr(gmnn.models, name)(**{**COMMON, **(extra or {}), **kwargs})


def batch(model: MoEModule, n: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs ``[n, 2]`` and targets of the model's task (class labels, or floats ``[n, C]`` for regression)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=generator)
    if isinstance(model, RegressionMoE):
        return x, torch.randn(n, C, generator=generator)
    return x, torch.randint(0, C, (n,), generator=generator)


def gate_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that score the experts: the gate network's and the attention gate's."""
    return {name: p for name, p in model.named_parameters() if name.startswith(("gate.", "attention."))}


def loader(model: MoEModule, n: int = 64, batch_size: int = 16) -> torch.utils.data.DataLoader:
    x, y = batch(model, n)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
