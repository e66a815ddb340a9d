"""Auxiliary losses of sparse routers. Pure functions."""

from __future__ import annotations

import torch
from torch import Tensor


def load_balancing_loss(router_probs: Tensor, indices: Tensor) -> Tensor:
    """Switch Transformer load-balancing loss ``E * sum_i f_i P_i`` (Fedus et al., 2021).

    ``f_i`` is the fraction of routed (token, expert) pairs sent to expert i
    (``k`` pairs per token), ``P_i`` the mean router probability of expert i.
    It equals 1 under uniform routing and grows as routing concentrates.

    Args:
        router_probs: Softmax router probabilities ``[T, E]``.
        indices: Routed experts ``[T, k]``.

    Returns:
        Scalar loss.
    """
    num_experts = router_probs.shape[-1]
    flat = indices.reshape(-1)
    counts = torch.zeros(num_experts, dtype=router_probs.dtype, device=router_probs.device)
    fraction = counts.scatter_add(0, flat, torch.ones_like(flat, dtype=router_probs.dtype)) / flat.numel()
    return num_experts * (fraction * router_probs.mean(dim=0)).sum()


def router_z_loss(router_logits: Tensor) -> Tensor:
    """Router z-loss ``mean_t (logsumexp_i z_ti)^2`` (Zoph et al., 2022, "ST-MoE"): keeps logits small.

    Args:
        router_logits: ``[T, E]``.

    Returns:
        Scalar loss.
    """
    return torch.logsumexp(router_logits, dim=-1).square().mean()
