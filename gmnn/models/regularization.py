"""Glue between :class:`~gmnn.models.base.MoEModule` and the gate regularizers."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from gmnn.nn import regularizers as R
from gmnn.nn.functional.losses import entropy, per_expert_nll
from gmnn.nn.mixture.output import MoEOutput
from gmnn.validation import check_choice, check_non_negative, check_positive

REGULARIZERS = (
    "importance", "similarity_same", "similarity_different", "load_balancing", "z_loss", "ideal_gate", "allocation",
    "entropy_allocation", "orthogonality", "prediction_class_cv",
)
ALLOCATION = ("allocation", "entropy_allocation")
SIMILARITY = ("similarity_same", "similarity_different")


def check_regularizers(weights: Mapping[str, float] | None, sample_distance: str | None, allocation_temperature: float) -> dict[str, float]:
    """Validate regularizer weights; return the non-zero ones.

    Raises:
        ValueError: Unknown name, negative weight, a similarity weight without
            ``sample_distance``, or ``allocation_temperature`` <= 0.
    """
    weights = dict(weights or {})
    for name, weight in weights.items():
        check_choice("regularizers key", name, REGULARIZERS)
        check_non_negative(f"regularizers[{name!r}]", weight)
    if sample_distance is not None:
        check_choice("sample_distance", sample_distance, R.DISTANCES)
    elif any(weights.get(name, 0) > 0 for name in SIMILARITY):
        raise ValueError(
            "sample_distance must be one of " f"{R.DISTANCES} when regularizers similarity_same/similarity_different > 0, got None"
        )
    check_positive("allocation_temperature", allocation_temperature)
    return {name: float(w) for name, w in weights.items() if w > 0}


def regularizer_values(
    weights: Mapping[str, float],
    out: MoEOutput,
    y: Tensor,
    temperature: float,
    allocation_temperature: float,
    distances: Callable[[], Tensor],
    expert_log_probs: Callable[[], Tensor],
    importance_std: str = "population",
) -> dict[str, Tensor]:
    """Unweighted values of the regularizers with a non-zero weight.

    Args:
        weights: Non-zero weights by name (see :data:`REGULARIZERS`).
        out: The model's forward output.
        y: Labels ``[B]``.
        temperature: The gate's current temperature (for the allocation loss).
        allocation_temperature: Temperature of the soft-min allocation target.
        distances: Returns the pairwise sample distances ``[B, B]`` (only called when needed).
        expert_log_probs: Returns every expert's log-probabilities ``[B, E, C]`` (only called when needed).
        importance_std: ``"population"`` or ``"unbiased"`` std of the importance loss (:func:`R.importance_loss`).
    """
    values: dict[str, Tensor] = {}
    g = out.gate_probs
    if "importance" in weights:
        values["importance"] = R.importance_loss(g, importance_std)
    if weights.keys() & set(SIMILARITY):
        same, different = R.sample_similarity_terms(g, distances())
        values.update(similarity_same=same, similarity_different=-different)
    if "load_balancing" in weights:
        values["load_balancing"] = R.load_balancing_loss(g)
    if "z_loss" in weights:
        if out.gate_logits is None:
            raise ValueError("regularizers['z_loss'] needs gate logits; this model has no gate")
        values["z_loss"] = R.router_z_loss(out.gate_logits)
    if weights.keys() & {"orthogonality", "prediction_class_cv"}:
        probs = expert_log_probs().exp()  # the experts' class probabilities, as the reference's softmax experts
        if "orthogonality" in weights:
            values["orthogonality"] = R.orthogonality_loss(probs)
        if "prediction_class_cv" in weights:
            values["prediction_class_cv"] = R.prediction_class_cv((g.unsqueeze(-1) * probs).sum(1))
    if weights.keys() & {"ideal_gate", *ALLOCATION}:
        log_probs = expert_log_probs()
        scores = {"ideal_gate": per_expert_nll(log_probs, y), "allocation": per_expert_nll(log_probs, y)}
        scores["entropy_allocation"] = entropy(log_probs)
        if "ideal_gate" in weights:
            values["ideal_gate"] = R.ideal_gate_loss(g, scores["ideal_gate"])
        for name in weights.keys() & set(ALLOCATION):
            if out.gate_logits is None:
                raise ValueError(f"regularizers[{name!r}] needs gate logits; this model has no gate")
            log_gate = torch.log_softmax(out.gate_logits / temperature, dim=-1)
            values[name] = R.allocation_loss(log_gate, scores[name], allocation_temperature)
    return {name: value for name, value in values.items() if name in weights}
