"""Routing: from gate logits to (log) gate weights. Pure functions."""

from __future__ import annotations

import torch
from torch import Tensor

from gmnn.validation import check_positive


def softmax_routing(gate_logits: Tensor, temperature: float | Tensor = 1.0) -> Tensor:
    """Dense routing: ``log softmax(gate_logits / T)`` over experts.

    Args:
        gate_logits: ``[B, E]``.
        temperature: T > 0; large T flattens the gate, small T sharpens it.

    Returns:
        Log gate probabilities ``[B, E]``.
    """
    if not isinstance(temperature, Tensor):
        check_positive("temperature", temperature)
    return torch.log_softmax(gate_logits / temperature, dim=-1)


def top_k_routing(gate_logits: Tensor, k: int, temperature: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
    """Top-k routing with the softmax renormalised over the selected experts.

    Args:
        gate_logits: ``[B, E]``.
        k: Number of experts per sample, ``1 <= k <= E``.
        temperature: T > 0, applied before the softmax.

    Returns:
        ``(log_weights [B, k], indices [B, k])``: log of the renormalised
        gate weights of the selected experts, sorted by decreasing weight.
    """
    num_experts = gate_logits.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
        raise ValueError(f"k must be an integer in [1, num_experts={num_experts}], got {k!r}")
    if not isinstance(temperature, Tensor):
        check_positive("temperature", temperature)
    top_logits, indices = gate_logits.topk(k, dim=-1)
    return torch.log_softmax(top_logits / temperature, dim=-1), indices

