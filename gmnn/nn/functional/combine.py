"""Combining expert predictions into one predictive distribution.

All functions work in log space and return log-probabilities ``[B, C]`` whose
exponentials sum to one over classes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmnn.validation import check_shape

# PyTorch's CPU log-softmax vectorises along the softmax dimension: over a handful of classes it is
# several times slower than the same softmax over the leading dimension of the transposed tensor
SMALL_CLASS_DIM = 32


def class_log_probs(logits: Tensor) -> Tensor:
    """``log_softmax(logits, dim=-1)``: the class log-probabilities of logits ``[..., C]`` (e.g. ``[B, E, C]``).

    On the CPU with few classes (C <= 32) it is computed over the leading dimension of the
    transposed tensor and returned as a strided view: the same values, without the slow path of
    PyTorch's CPU log-softmax over a short last dimension (see :data:`SMALL_CLASS_DIM`).
    """
    if logits.device.type != "cpu" or logits.dim() < 2 or logits.shape[-1] > SMALL_CLASS_DIM:
        return torch.log_softmax(logits, dim=-1)
    return torch.log_softmax(logits.movedim(-1, 0).contiguous(), dim=0).movedim(0, -1)


def dense_mixture(log_gate: Tensor, expert_log_probs: Tensor) -> Tensor:
    """Mixture ``log sum_i g_i p_i(y|x)`` computed with logsumexp.

    Args:
        log_gate: Log gate weights ``[B, E]`` (log-probabilities over experts).
        expert_log_probs: Per-expert class log-probabilities ``[B, E, C]``.

    Returns:
        Log-probabilities ``[B, C]``.
    """
    check_shape("expert_log_probs", expert_log_probs, (log_gate.shape[0], log_gate.shape[1], -1))
    return torch.logsumexp(log_gate.unsqueeze(-1) + expert_log_probs, dim=1)


def sparse_mixture(log_weights: Tensor, selected_log_probs: Tensor, residual_log_mass: Tensor | None = None) -> Tensor:
    """Mixture over the k selected experts, optionally with a uniform residual.

    With ``residual_log_mass=None`` the weights must already be normalised
    over the k experts (renormalised top-k). Otherwise the weights are the
    un-renormalised gate probabilities of the selected experts and the gate
    mass of the unselected experts, ``exp(residual_log_mass)``, is spent on
    the uniform distribution over the C classes. The result is still a proper
    distribution, reduces to the dense mixture when k = E, and gives the gate
    a gradient even when k = 1: the selected expert's weight grows when it
    predicts the label better than chance.

    Args:
        log_weights: ``[B, k]``.
        selected_log_probs: ``[B, k, C]``.
        residual_log_mass: ``[B]`` or ``None``.

    Returns:
        Log-probabilities ``[B, C]``.
    """
    mixture = dense_mixture(log_weights, selected_log_probs)
    if residual_log_mass is None:
        return mixture
    num_classes = selected_log_probs.shape[-1]
    uniform = (residual_log_mass - math.log(num_classes)).unsqueeze(-1).expand_as(mixture)
    return torch.logaddexp(mixture, uniform)


def product_of_experts(gate_weights: Tensor, expert_log_probs: Tensor) -> Tensor:
    """Weighted product of experts: ``log p(y|x) ∝ sum_i g_i log p_i(y|x)``.

    Renormalised over classes with ``log_softmax`` (Hinton, 2002). Identical
    experts with weights summing to one give back that expert.

    Args:
        gate_weights: ``[B, E]`` non-negative weights (gate probabilities, or ones).
        expert_log_probs: ``[B, E, C]``.

    Returns:
        Log-probabilities ``[B, C]``.
    """
    check_shape("expert_log_probs", expert_log_probs, (gate_weights.shape[0], gate_weights.shape[1], -1))
    scores = (gate_weights.unsqueeze(-1) * expert_log_probs).sum(dim=1)
    return torch.log_softmax(scores, dim=-1)


def top_k_mixture(log_gate: Tensor, indices: Tensor, selected_log_probs: Tensor, residual: bool) -> Tensor:
    """Mixture over the selected experts of a full gate distribution.

    Args:
        log_gate: Log gate probabilities over all experts ``[B, E]``.
        indices: Selected experts ``[B, k]``.
        selected_log_probs: Their log-probabilities ``[B, k, C]``.
        residual: ``False``: renormalise the gate over the k experts (the usual
            top-k mixture; with k = 1 the gate then gets no gradient).
            ``True``: keep the un-renormalised weights and spend the unselected
            mass on the uniform distribution (see :func:`sparse_mixture`).

    Returns:
        Log-probabilities ``[B, C]``.
    """
    log_selected = log_gate.gather(-1, indices)
    if residual:
        # the most negative finite value, not -inf: with every unselected expert at gate probability 0, the
        # logsumexp of an all -inf row would be -inf with a NaN gradient
        masked = log_gate.scatter(-1, indices, torch.finfo(log_gate.dtype).min)
        return sparse_mixture(log_selected, selected_log_probs, torch.logsumexp(masked, dim=-1))
    return sparse_mixture(torch.log_softmax(log_selected, dim=-1), selected_log_probs)


def softmax_of_mixture(log_mixture: Tensor) -> Tensor:
    """Log of ``softmax(sum_i g_i p_i(.|x))`` from the mixture's log-probabilities ``[..., C]``.

    The output (and, through its cross-entropy, the objective) of the reference's
    expectation model (``moe_models/moe_expectation_model.py`` line 58 of
    yamsgithub/modular_deep_learning): the probabilities are mixed, then softmaxed
    again. The resulting loss cannot go below ``-log(e / (e + C - 1))`` (1.46 nats
    for C = 10) even with perfect experts.
    """
    return torch.log_softmax(log_mixture.exp(), dim=-1)
