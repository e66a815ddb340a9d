"""Regularizers of the gate: pure functions of gate probabilities, logits and losses.

Each returns an unweighted scalar; the caller multiplies by its weight. Gate
tensors may be ``[B, E]`` or ``[..., E]`` (leading axes are treated as the
batch), so sparse layers can import them too.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from gmnn.validation import check_choice

Distance = Literal["euclidean", "cosine"]
DISTANCES: tuple[str, ...] = get_args(Distance)


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


ImportanceStd = Literal["population", "unbiased"]
IMPORTANCE_STDS: tuple[str, ...] = get_args(ImportanceStd)


def importance_loss(gate_probs: Tensor, std: str = "population") -> Tensor:
    """Squared coefficient of variation of per-expert importance (Shazeer et al., 2017).

    Importance of expert e is ``sum_batch g_e``; the loss is
    ``var(importance) / mean(importance)^2``. ``std="population"`` divides the
    variance by E (0 for a uniform gate, ``E - 1`` when every sample goes to one
    expert); ``"unbiased"`` by E - 1, as ``torch.std`` in the reference's
    ``loss_importance`` (``helper/moe_models.py`` lines 91-96 of
    ``yamsgithub/modular_deep_learning``): ``E / (E - 1)`` times the population value.
    """
    check_choice("importance_std", std, IMPORTANCE_STDS)
    importance = _flat(gate_probs).sum(0)
    correction = 1 if std == "unbiased" and importance.numel() > 1 else 0
    return importance.var(correction=correction) / importance.mean().pow(2).clamp_min(1e-12)


def sample_distances(x: Tensor, metric: str = "euclidean") -> Tensor:
    """Pairwise sample distances ``[B, B]`` on flattened inputs, divided by the batch maximum.

    Args:
        x: Inputs or features ``[B, ...]``.
        metric: ``"euclidean"`` or ``"cosine"`` (1 - cosine similarity).
    """
    check_choice("metric", metric, DISTANCES)
    flat = x.flatten(1).float()
    if metric == "euclidean":
        distances = torch.cdist(flat, flat)
    else:
        unit = F.normalize(flat, dim=-1)
        distances = (1 - unit @ unit.T).clamp_min(0)
    return distances / distances.max().clamp_min(1e-12)


def sample_similarity_terms(gate_probs: Tensor, distances: Tensor) -> tuple[Tensor, Tensor]:
    """The two terms of the sample-similarity loss (Krishnamurthy, Watkins & Gaertner, 2023).

    same = ``sum_ij (sum_e g_ie g_je / E) D_ij``;
    different = ``sum_ij (sum_{e != f} g_ie g_jf / (E^2 - E)) D_ij / B^2`` (0 when E = 1).
    The loss is ``beta_s * same - beta_d * different``: dissimilar samples
    sharing an expert are penalised, dissimilar samples on different experts
    rewarded. O(B^2 E) with two matrix products.

    Args:
        gate_probs: ``[B, E]``.
        distances: ``[B, B]``.

    Returns:
        ``(same, different)`` scalars.
    """
    g = _flat(gate_probs)
    batch, experts = g.shape
    shared = g @ g.T  # [B, B]: sum_e g_ie g_je
    same = (shared * distances).sum() / experts
    if experts == 1:
        return same, same.new_zeros(())
    totals = g.sum(-1)
    crossed = totals.unsqueeze(1) * totals.unsqueeze(0) - shared  # sum_{e != f} g_ie g_jf
    different = (crossed * distances).sum() / (experts * experts - experts) / batch**2
    return same, different


def sample_token_pairs(tokens: int, pairs: int, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``pairs`` token pairs ``(first [P], second [P])`` drawn uniformly, with replacement, from ``tokens`` tokens.

    The pairs of :func:`pair_similarity_terms`: ``P`` of them instead of the ``T^2`` of a full
    distance matrix, so the regularizer costs ``O(P (d + E))`` memory at any sequence length.
    """
    if tokens < 1 or pairs < 1:
        raise ValueError(f"tokens and pairs must be >= 1, got tokens={tokens}, pairs={pairs}")
    first = torch.randint(tokens, (pairs,), device=device, generator=generator)
    second = torch.randint(tokens, (pairs,), device=device, generator=generator)
    return first, second


def pair_similarity_terms(gate_probs: Tensor, x: Tensor, first: Tensor, second: Tensor, metric: str = "euclidean",
                          weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The sample-similarity terms (Krishnamurthy, Watkins & Gaertner, 2023, "Improving Expert Specialization
    in Mixture of Experts") over given pairs of tokens: the token-level, memory-bounded form of
    :func:`sample_similarity_terms`.

    For pairs ``(i, j) = (first[p], second[p])`` with distance ``d_p`` between ``x_i`` and ``x_j``
    (``"euclidean"`` or ``"cosine"``, 1 - cosine similarity; computed without gradient and divided by
    the largest ``d_p`` of the pairs):

    same = ``mean_p (sum_e g_ie g_je / E) d_p``;
    different = ``mean_p (sum_{e != f} g_ie g_jf / (E^2 - E)) d_p`` (0 when E = 1).

    Over all ``T^2`` ordered pairs these are ``sample_similarity_terms(g, sample_distances(x))``'s
    ``same / T^2`` and ``different``: ``same`` becomes a mean instead of a sum, so that its scale
    does not grow with the number of tokens. Over ``P`` pairs drawn uniformly
    (:func:`sample_token_pairs`) they are unbiased estimates of those means (the distances divided by
    the largest sampled one). Memory ``O(P (d + E))``: no ``[T, T]`` tensor.

    Args:
        gate_probs: Router probabilities ``[T, E]`` (the gradient flows through them).
        x: The router's inputs ``[T, d]`` (constant: the distances carry no gradient).
        first: First token of each pair ``[P]`` (int64).
        second: Second token of each pair ``[P]``.
        metric: ``"euclidean"`` or ``"cosine"``.
        weight: Optional ``[P]`` weight of each pair (e.g. 0 where a token is padding); the means are weighted.

    Returns:
        ``(same, different)`` scalars.
    """
    check_choice("metric", metric, DISTANCES)
    g = _flat(gate_probs)
    experts = g.shape[-1]
    with torch.no_grad():
        a, b = x.index_select(0, first).float(), x.index_select(0, second).float()
        if metric == "euclidean":
            distances = (a - b).norm(dim=-1)
        else:
            distances = (1 - F.cosine_similarity(a, b, dim=-1)).clamp_min(0)
        if weight is not None:
            distances = distances * weight.to(distances.dtype)
        distances = distances / distances.max().clamp_min(1e-12)
        total = distances.new_tensor(float(first.numel())) if weight is None else weight.to(distances.dtype).sum()
        total = total.clamp_min(1)
    gi, gj = g.index_select(0, first), g.index_select(0, second)
    shared = (gi * gj).sum(-1)  # sum_e g_ie g_je
    same = (shared * distances).sum() / total / experts
    if experts == 1:
        return same, same.new_zeros(())
    crossed = gi.sum(-1) * gj.sum(-1) - shared  # sum_{e != f} g_ie g_jf
    different = (crossed * distances).sum() / total / (experts * experts - experts)
    return same, different


def load_balancing_loss(gate_probs: Tensor) -> Tensor:
    """Switch Transformer load-balancing loss ``E * sum_e f_e P_e`` (Fedus et al., 2021).

    ``f_e`` is the fraction of samples whose top-1 expert is e (no gradient),
    ``P_e`` the mean gate probability of e. Equals 1 for a perfectly balanced gate.
    """
    g = _flat(gate_probs)
    experts = g.shape[-1]
    fraction = F.one_hot(g.argmax(-1), experts).to(g.dtype).mean(0)
    return experts * (fraction * g.mean(0)).sum()


def router_z_loss(gate_logits: Tensor) -> Tensor:
    """Router z-loss ``mean (logsumexp gate_logits)^2`` (Zoph et al., 2022, ST-MoE)."""
    return torch.logsumexp(_flat(gate_logits).float(), dim=-1).pow(2).mean()


def ideal_gate_loss(gate_probs: Tensor, expert_losses: Tensor) -> Tensor:
    """MSE between the gate and the one-hot of each sample's lowest-loss expert.

    Args:
        gate_probs: ``[B, E]``.
        expert_losses: Per-sample loss of every expert ``[B, E]`` (not differentiated).
    """
    target = F.one_hot(expert_losses.detach().argmin(-1), gate_probs.shape[-1]).to(gate_probs.dtype)
    return F.mse_loss(gate_probs, target)


def allocation_loss(log_gate: Tensor, scores: Tensor, temperature: float) -> Tensor:
    """Cross-entropy from the soft-min allocation ``softmin(s / T)`` to the gate.

    Fits a gate to reproduce a gate-less allocation (see :func:`gmnn.nn.functional.losses.softmin_allocation`).

    Args:
        log_gate: Log gate probabilities ``[B, E]``.
        scores: Per-sample score of every expert ``[B, E]``, lower is better:
            its loss or its output entropy (not differentiated).
        temperature: T > 0 of the target allocation.
    """
    target = torch.softmax(-scores.detach() / temperature, dim=-1)
    return -(target * log_gate).sum(-1).mean()


def orthogonality_loss(expert_outputs: Tensor) -> Tensor:
    """Overlap of the experts' outputs: ``mean_{a,b} sum_{i<j} |<y_i(x_a), y_j(x_b)>|``.

    The reference's ``w_ortho`` term (``moe_models/moe_pre_softmax_expectation_model.py``
    lines 205-216 and ``moe_concat_model.py`` lines 184-195 of
    ``yamsgithub/modular_deep_learning``): for every pair of experts i < j the
    ``[B, B]`` matrix ``|Y_i Y_j^T|`` of their outputs' inner products over all
    pairs of samples, summed over the expert pairs, then averaged over the
    ``B^2`` entries. 0 when no two experts put mass on the same class.

    Args:
        expert_outputs: Every expert's outputs ``[B, E, C]`` (probabilities, or logits).
    """
    experts = expert_outputs.shape[1]
    if experts < 2:
        return expert_outputs.new_zeros(())
    first, second = torch.triu_indices(experts, experts, offset=1, device=expert_outputs.device)
    inner = torch.einsum("apc,bpc->pab", expert_outputs[:, first], expert_outputs[:, second])  # [pairs, B, B]
    return inner.abs().sum(0).mean()


def prediction_class_cv(predictions: Tensor) -> Tensor:
    """Squared coefficient of variation (unbiased std) of the class mass of a batch's predictions.

    The reference's ``w_ortho`` term of its base class (``moe_models/moe_models_base.py``
    lines 281-286): ``(std_c(m) / mean_c(m))^2`` with ``m_c = sum_batch
    sum_i g_i p_i(c|x)``, the importance loss applied to the mixture's class
    probabilities instead of the gate; 0 when the batch predicts every class
    equally often.

    Args:
        predictions: The mixture's class probabilities ``[B, C]``.
    """
    mass = predictions.sum(0)
    return mass.var(correction=1) / mass.mean().pow(2).clamp_min(1e-12)


def sequence_balance_loss(router_probs: Tensor, selected: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sequence-wise balance loss ``sum_i f_i P_i`` of DeepSeek-V3 (DeepSeek-AI, 2024, eq. 17-20), mean over sequences.

    Per sequence of ``T`` counted tokens: ``f_i = E / (k T) * #{tokens routed to i}``
    (no gradient) and ``P_i = mean_t s'_{i,t}``, the mean normalised affinity
    (the softmax probabilities, or sigmoid scores divided by their sum). Equals 1
    when every sequence spreads its tokens evenly. Slots ``-1`` and tokens outside
    ``mask`` do not count; sequences without counted tokens are left out of the mean.

    Args:
        router_probs: Normalised affinities ``[B, T, E]``.
        selected: Routed experts ``[B, T, k]`` (``-1``: empty slot).
        mask: ``[B, T]`` bool, the tokens that count, or ``None``.
    """
    batch, _, num_experts = router_probs.shape
    keep = torch.ones(selected.shape[:2], dtype=torch.bool, device=selected.device) if mask is None else mask.bool()
    valid = (selected >= 0) & keep.unsqueeze(-1)
    counts = router_probs.new_zeros(batch, num_experts).scatter_add(
        1, selected.clamp_min(0).reshape(batch, -1), valid.reshape(batch, -1).to(router_probs.dtype))
    tokens = keep.sum(1).to(router_probs.dtype)  # [B]
    denominator = tokens.clamp_min(1).unsqueeze(-1)
    fraction = counts * num_experts / (selected.shape[-1] * denominator)
    mean_probs = (router_probs * keep.unsqueeze(-1).to(router_probs.dtype)).sum(1) / denominator
    per_sequence = (fraction.detach() * mean_probs).sum(-1)
    counted = (tokens > 0).to(router_probs.dtype)
    return (per_sequence * counted).sum() / counted.sum().clamp_min(1)
