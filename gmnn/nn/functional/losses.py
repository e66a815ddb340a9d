"""Losses of the training methods, in log space. Pure functions."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from gmnn.validation import check_non_negative, check_positive


def per_expert_nll(expert_log_probs: Tensor, y: Tensor) -> Tensor:
    """Per-sample negative log-likelihood of every expert ``[B, E]`` from ``[B, E, C]`` and labels ``[B]``."""
    index = y.view(-1, 1, 1).expand(-1, expert_log_probs.shape[1], 1)
    return -expert_log_probs.gather(-1, index).squeeze(-1)


def stochastic_mixture_loss(log_gate: Tensor, expert_losses: Tensor) -> Tensor:
    """Loss of the stochastic mixture ``-log sum_i g_i exp(-L_i / 2)``, averaged over the batch.

    Jacobs, Jordan, Nowlan & Hinton (1991), "Adaptive mixtures of local
    experts": each expert is trained as if it alone produced the output and the
    gate as the prior of choosing it. Computed with logsumexp, finite when a
    gate probability is 0 (``log_gate = -inf``).

    Args:
        log_gate: Log gate probabilities ``[B, E]``.
        expert_losses: Per-sample loss ``L_i`` of every expert ``[B, E]``.
    """
    return -torch.logsumexp(log_gate - 0.5 * expert_losses, dim=-1).mean()


def softmin_allocation(scores: Tensor, temperature: float | Tensor, noise: float = 0.0) -> Tensor:
    """Gate-less allocation: log of ``softmin((scores + noise) / T)`` over experts ``[B, E]``.

    The expert with the lowest score (per-sample loss, or output entropy) gets
    the most weight; as T -> 0 it gets all of it.

    Args:
        scores: ``[B, E]``, lower is better (gradients are not propagated).
        temperature: T > 0.
        noise: Standard deviation of Gaussian noise added to the scores (0: none).

    Returns:
        Log allocation weights ``[B, E]``.
    """
    if not isinstance(temperature, Tensor):
        check_positive("temperature", temperature)
    check_non_negative("noise", noise)
    scores = scores.detach()
    if noise > 0:
        scores = scores + noise * torch.randn_like(scores)
    return torch.log_softmax(-scores / temperature, dim=-1)


def entropy(log_probs: Tensor) -> Tensor:
    """Entropy (nats) over the last axis of log-probabilities; 0·log 0 counts as 0."""
    return -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1)


HardEMStep = Literal["complete_data", "gate_weighted"]
HARD_EM_M_STEPS: tuple[str, ...] = get_args(HardEMStep)


def hard_assignment(log_gate: Tensor, expert_log_probs: Tensor, y: Tensor) -> Tensor:
    """E step of hard EM: each sample's expert ``argmax_i g_i p_i(y|x)`` ``[B]`` (no gradient).

    Args:
        log_gate: Log gate probabilities ``[B, E]``.
        expert_log_probs: Every expert's log-probabilities ``[B, E, C]``.
        y: Labels ``[B]``.
    """
    return (log_gate - per_expert_nll(expert_log_probs, y)).detach().argmax(-1)


def hard_em_loss(log_gate: Tensor, expert_log_probs: Tensor, y: Tensor, assigned: Tensor, m_step: str) -> Tensor:
    """M-step loss of hard EM for the assignments ``assigned`` ``[B]``, averaged over the batch.

    ``"complete_data"``: ``-log g_a - log p_a(y|x)``. ``"gate_weighted"`` (the
    reference ``moe_em_model.py``): ``-g_a log(p_a(y|x) + 1e-7)``.
    """
    index = assigned.view(-1, 1)
    log_gate_a = log_gate.gather(1, index).squeeze(1)
    log_p_a = -per_expert_nll(expert_log_probs, y).gather(1, index).squeeze(1)
    if m_step == "complete_data":
        return -(log_gate_a + log_p_a).mean()
    if m_step == "gate_weighted":
        return -(log_gate_a.exp() * (log_p_a.exp() + 1e-7).log()).mean()
    raise ValueError(f"m_step must be one of {HARD_EM_M_STEPS}, got {m_step!r}")
