"""The gate regularizers a model option can switch on, each defined once.

A regularizer is one function of a :class:`RegularizerInputs` registered with
:func:`regularizer` under the name its weight takes in ``MoEModule(regularizers={name: weight})``;
its one-line summary feeds the model's ``--help``. Adding one is adding one function here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from gmnn.nn.functional import regularizers as R
from gmnn.nn.functional.losses import entropy, per_expert_nll
from gmnn.nn.mixture.output import MoEOutput
from gmnn.validation import check_choice, check_non_negative, check_positive

SIMILARITY = ("similarity_same", "similarity_different")


@dataclass
class RegularizerInputs:
    """What a regularizer may read of one training batch; the costly parts are computed once, on first use.

    Args:
        out: The model's forward output.
        y: Labels ``[B]``.
        temperature: The gate's current temperature.
        allocation_temperature: Temperature of the soft-min allocation target.
        distances: Returns the pairwise sample distances ``[B, B]``.
        all_expert_log_probs: Returns every expert's log-probabilities ``[B, E, C]``.
        importance_std: ``"population"`` or ``"unbiased"`` std of the importance loss.
    """

    out: MoEOutput
    y: Tensor
    temperature: float
    allocation_temperature: float
    distances: Callable[[], Tensor]
    all_expert_log_probs: Callable[[], Tensor]
    importance_std: str = "population"

    @cached_property
    def expert_log_probs(self) -> Tensor:
        """Every expert's class log-probabilities ``[B, E, C]``."""
        return self.all_expert_log_probs()

    @cached_property
    def expert_probs(self) -> Tensor:
        """Every expert's class probabilities ``[B, E, C]`` (the reference's softmax experts)."""
        return self.expert_log_probs.exp()

    @cached_property
    def expert_nll(self) -> Tensor:
        """Every expert's loss on each sample ``[B, E]``."""
        return per_expert_nll(self.expert_log_probs, self.y)

    @cached_property
    def similarity(self) -> tuple[Tensor, Tensor]:
        """The sample-similarity loss's two terms (same, different)."""
        return R.sample_similarity_terms(self.out.gate_probs, self.distances())

    def gate_logits(self, name: str) -> Tensor:
        """The gate logits, or a ``ValueError`` naming the regularizer ``name`` that needs them."""
        if self.out.gate_logits is None:
            raise ValueError(f"regularizers[{name!r}] needs gate logits; this model has no gate")
        return self.out.gate_logits

    def log_gate(self, name: str) -> Tensor:
        """Log gate probabilities at the current temperature."""
        return torch.log_softmax(self.gate_logits(name) / self.temperature, dim=-1)


@dataclass(frozen=True)
class Regularizer:
    """A registered regularizer: its name, one line on what it pushes toward, and its value."""

    name: str
    summary: str
    value: Callable[[RegularizerInputs], Tensor]


#: Every regularizer by name, in the order their terms are added to the loss.
REGULARIZERS: dict[str, Regularizer] = {}


def regularizer(name: str, summary: str) -> Callable[[Callable[[RegularizerInputs], Tensor]], Callable[[RegularizerInputs], Tensor]]:
    """Register the decorated function as the regularizer ``name`` (its unweighted value on a batch)."""

    def register(value: Callable[[RegularizerInputs], Tensor]) -> Callable[[RegularizerInputs], Tensor]:
        REGULARIZERS[name] = Regularizer(name, summary, value)
        return value

    return register


@regularizer("importance", "squared CV of the per-expert importance (Shazeer et al., 2017)")
def _importance(inputs: RegularizerInputs) -> Tensor:
    return R.importance_loss(inputs.out.gate_probs, inputs.importance_std)


@regularizer("similarity_same", "beta_s of the sample-similarity loss: nearby samples to one expert")
def _similarity_same(inputs: RegularizerInputs) -> Tensor:
    return inputs.similarity[0]


@regularizer("similarity_different", "beta_d of the sample-similarity loss: distant samples to different experts")
def _similarity_different(inputs: RegularizerInputs) -> Tensor:
    return -inputs.similarity[1]


@regularizer("load_balancing", "Switch Transformer load balancing (Fedus et al., 2021)")
def _load_balancing(inputs: RegularizerInputs) -> Tensor:
    return R.load_balancing_loss(inputs.out.gate_probs)


@regularizer("z_loss", "router z-loss (Zoph et al., 2022)")
def _z_loss(inputs: RegularizerInputs) -> Tensor:
    return R.router_z_loss(inputs.gate_logits("z_loss"))


@regularizer("orthogonality", "mean over sample pairs of sum_{i<j} |<p_i(x_a), p_j(x_b)>| (the reference's w_ortho)")
def _orthogonality(inputs: RegularizerInputs) -> Tensor:
    return R.orthogonality_loss(inputs.expert_probs)


@regularizer("prediction_class_cv", "squared CV (unbiased std) of the class mass of the batch's mixture predictions")
def _prediction_class_cv(inputs: RegularizerInputs) -> Tensor:
    return R.prediction_class_cv((inputs.out.gate_probs.unsqueeze(-1) * inputs.expert_probs).sum(1))


@regularizer("ideal_gate", "MSE to the one-hot lowest-loss expert")
def _ideal_gate(inputs: RegularizerInputs) -> Tensor:
    return R.ideal_gate_loss(inputs.out.gate_probs, inputs.expert_nll)


@regularizer("allocation", "cross-entropy to softmin(per-expert loss / allocation_temperature)")
def _allocation(inputs: RegularizerInputs) -> Tensor:
    return R.allocation_loss(inputs.log_gate("allocation"), inputs.expert_nll, inputs.allocation_temperature)


@regularizer("entropy_allocation", "cross-entropy to softmin(expert output entropy / allocation_temperature)")
def _entropy_allocation(inputs: RegularizerInputs) -> Tensor:
    scores = entropy(inputs.expert_log_probs)
    return R.allocation_loss(inputs.log_gate("entropy_allocation"), scores, inputs.allocation_temperature)


def regularizer_help() -> str:
    """One line per registered regularizer, ``name: summary`` (for docstrings and ``--help``)."""
    return "; ".join(f"``{r.name}``: {r.summary}" for r in REGULARIZERS.values())


def check_regularizers(weights: Mapping[str, float] | None, sample_distance: str | None, allocation_temperature: float) -> dict[str, float]:
    """Validate regularizer weights; return the non-zero ones.

    Raises:
        ValueError: Unknown name, negative weight, a similarity weight without
            ``sample_distance``, or ``allocation_temperature`` <= 0.
    """
    weights = dict(weights or {})
    for name, weight in weights.items():
        check_choice("regularizers key", name, tuple(REGULARIZERS))
        check_non_negative(f"regularizers[{name!r}]", weight)
    if sample_distance is not None:
        check_choice("sample_distance", sample_distance, R.DISTANCES)
    elif any(weights.get(name, 0) > 0 for name in SIMILARITY):
        raise ValueError(
            "sample_distance must be one of " f"{R.DISTANCES} when regularizers similarity_same/similarity_different > 0, got None"
        )
    check_positive("allocation_temperature", allocation_temperature)
    return {name: float(w) for name, w in weights.items() if w > 0}


def regularizer_values(weights: Mapping[str, float], inputs: RegularizerInputs) -> dict[str, Tensor]:
    """Unweighted values of the regularizers with a non-zero weight, in :data:`REGULARIZERS` order."""
    return {name: spec.value(inputs) for name, spec in REGULARIZERS.items() if name in weights}
