"""Every model of ``gmnn.models.__all__`` in each of its routing settings, for tests that must cover them all.

The list of classes is read from ``gmnn.models.__all__``, not kept by hand: a new
variant is tested with its defaults until it gets settings here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import gmnn.models
from gmnn.pl import LightningModule
from gmnn.models import MoEModule, RegressionMoE

E, C = 3, 3  # experts, classes (or regression targets)
COMMON = dict(input_shape=[2], num_classes=C, num_experts=E, expert_hidden=[8], gate_hidden=[8])
# Token models (a causal LM of MoELayer blocks): tokens [B, L] of a vocabulary of V; no auxiliary loss, so
# that the routers' gradient can only come from the task.
L_TOKENS, V = 8, 16
TOKEN_COMMON = dict(input_shape=[L_TOKENS], num_classes=V, num_experts=E, d_model=8, num_layers=1, num_heads=2,
                    expert_hidden=8, balance_weight=0.0, z_weight=0.0)

# Routing settings per class beyond the defaults: every k of the sparse variants, every gate-gradient mode.
SETTINGS: dict[str, list[dict[str, Any]]] = {
    "TopKMoE": [dict(k=k, gate_gradient=mode) for mode in ("residual", "renormalize", "stochastic")
                for k in range(1, E + 1) if not (mode == "renormalize" and k == 1)],
    "AttentionGateMoE": [dict(k=0)] + [dict(k=k, gate_gradient=mode) for mode in ("residual", "renormalize")
                                       for k in range(1, E + 1) if not (mode == "renormalize" and k == 1)],
    "ProductOfExperts": [dict(gated=True), dict(gated=False)],
    "RegressionMoE": [dict(k=k) for k in range(E + 1)],
    "GatelessMoE": [dict(allocation="loss"), dict(allocation="entropy")],
    "HardEMMoE": [dict(m_step="complete_data"), dict(m_step="gate_weighted")],
    "MoETransformerLM": [dict(k=k) for k in range(1, E + 1)] + [dict(router="sigmoid", k=1), dict(router="expert_choice", k=1)],
}


def is_token_model(model: nn.Module) -> bool:
    """A language model on token sequences (``forward(tokens) -> (logits [B, L, V], aux)``)."""
    token_class = getattr(gmnn.models, "MoETransformerLM", None)
    return token_class is not None and isinstance(model, token_class)


def model_classes() -> list[str]:
    """The names in ``gmnn.models.__all__`` that are LightningModules (every model, whatever its base)."""
    return [name for name in gmnn.models.__all__
            if isinstance(getattr(gmnn.models, name), type) and issubclass(getattr(gmnn.models, name), LightningModule)]


def cases() -> list[tuple[str, dict[str, Any]]]:
    """``(class name, extra arguments)`` for every class and each of its settings."""
    return [(name, extra) for name in model_classes() for extra in SETTINGS.get(name, [{}])]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, extra = case
    return name + "".join(f"-{key}={value}" for key, value in extra.items())


def build(name: str, extra: dict[str, Any] | None = None, **kwargs: Any) -> MoEModule:
    common = TOKEN_COMMON if name == "MoETransformerLM" else COMMON
    return getattr(gmnn.models, name)(**{**common, **(extra or {}), **kwargs})


def batch(model: MoEModule, n: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Inputs ``[n, 2]`` and targets of the model's task (class labels, or floats ``[n, C]`` for regression)."""
    generator = torch.Generator().manual_seed(seed)
    if is_token_model(model):
        return (torch.randint(0, V, (n, L_TOKENS), generator=generator),
                torch.randint(0, V, (n, L_TOKENS), generator=generator))
    x = torch.randn(n, 2, generator=generator)
    if isinstance(model, RegressionMoE):
        return x, torch.randn(n, C, generator=generator)
    return x, torch.randint(0, C, (n,), generator=generator)


def gate_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that score the experts: the gate network's, the attention gate's, each MoE layer's router."""
    return {name: p for name, p in model.named_parameters()
            if name.startswith(("gate.", "attention.", "router.")) or ".router." in name}


def expert_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The experts' parameters (``experts.*``, or ``*.experts.*`` inside MoE layers)."""
    return {name: p for name, p in model.named_parameters() if name.startswith("experts.") or ".experts." in name}


def outputs(model: MoEModule, x: Tensor) -> Tensor:
    """Everything the model outputs for ``x`` in eval mode, flattened into one ``[B, *]`` tensor."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    if is_token_model(model):
        logits, aux = out
        return torch.cat([logits.flatten(1), aux.expand(len(x), 1)], 1)
    return torch.cat([out.mean if isinstance(model, RegressionMoE) else out.log_probs, out.gate_probs], 1)


def loader(model: MoEModule, n: int = 64, batch_size: int = 16) -> torch.utils.data.DataLoader:
    x, y = batch(model, n)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
