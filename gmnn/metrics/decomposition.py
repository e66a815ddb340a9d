"""Task-decomposition metrics as torchmetrics ``Metric`` objects, all in bits.

Every state is a sum (``dist_reduce_fx="sum"``), so the metrics are exact
under DDP and updating in parts equals one update of the whole. Zero
probabilities contribute ``0 * log 0 = 0``, never NaN. Definitions follow
Krishnamurthy et al. (2023), "Improving Expert Specialization in Mixture of
Experts" (mutual information, sample entropy, expert usage), and Shazeer et
al. (2017) for the importance coefficient of variation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from gmnn.metrics.functional import entropy_bits, mutual_information_bits
from gmnn.validation import check_positive_int, check_shape

def _check_gate(metric: Metric, gate_probs: Tensor) -> None:
    check_shape("gate_probs", gate_probs, (-1, metric.num_experts))


def _check_classes(name: str, classes: Tensor, batch: int) -> None:
    check_shape(name, classes, (batch,))


class _ExactStates(Metric):
    """A metric whose floating-point states stay float64 whatever dtype the module is cast to.

    Lightning's ``bf16-true`` / ``16-true`` / ``64-true`` cast the whole LightningModule,
    metric states included; sums of probabilities kept in bfloat16 would round
    (and mismatch the float64 updates). States are cast back after every ``.to()``.
    """

    def _apply(self, fn: Any, exclude_state: Sequence[str] = "") -> Any:
        this = super()._apply(fn, exclude_state)
        for key, default in this._defaults.items():
            if isinstance(default, Tensor) and default.is_floating_point() and default.dtype != torch.float64:
                this._defaults[key] = default.double()
                setattr(this, key, getattr(this, key).double())
        return this


class MutualInformation(Metric):
    """Mutual information I(E;Y) in bits between the chosen expert and the class.

    Accumulates the E x C count matrix of (argmax of the gate, class). The
    class is whatever the caller passes: gmnn's modules pass the chosen
    expert's predicted class (``val/mutual_information``, as in the paper) and
    the true label (``val/mutual_information_label``). log2(E) means every
    expert handles its own classes; 0 means the expert says nothing about the class.

    Args:
        num_experts: Number of experts E >= 1.
        num_classes: Number of classes C >= 1.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_experts: int, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        check_positive_int("num_classes", num_classes)
        self.num_experts, self.num_classes = num_experts, num_classes
        self.add_state("counts", torch.zeros(num_experts, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, gate_probs: Tensor, classes: Tensor) -> None:
        """Count a batch: gate probabilities ``[B, E]`` and classes ``[B]``."""
        _check_gate(self, gate_probs)
        _check_classes("classes", classes, gate_probs.shape[0])
        cell = gate_probs.argmax(-1) * self.num_classes + classes.long()
        self.counts += torch.bincount(cell, minlength=self.num_experts * self.num_classes).view_as(self.counts)

    def compute(self) -> Tensor:
        return mutual_information_bits(self.counts)


class _GateSums(_ExactStates):
    """Sum of gate probabilities ``[E]`` and the number of samples seen."""

    full_state_update = False

    def __init__(self, num_experts: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        self.num_experts = num_experts
        self.add_state("gate_sum", torch.zeros(num_experts, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, gate_probs: Tensor) -> None:
        """Add a batch of gate probabilities ``[B, E]``."""
        _check_gate(self, gate_probs)
        self.gate_sum += gate_probs.detach().double().sum(0)  # float64 before summing: bf16 sums round
        self.total += gate_probs.shape[0]


class ExpertUsage(_GateSums):
    """Expert usage: the entropy in bits of the gate averaged over samples, H(mean_x g(x)).

    log2(E) when every expert takes an equal share, 0 when one expert takes everything.

    Args:
        num_experts: Number of experts E >= 1.
    """

    higher_is_better = True

    def compute(self) -> Tensor:
        return entropy_bits(self.gate_sum / self.total.clamp_min(1)).float()


class ImportanceCV(_GateSums):
    """Coefficient of variation (std / mean, population std) of the experts' total gate mass.

    The importance of Shazeer et al. (2017): 0 when all experts receive equal
    gate mass, sqrt(E - 1) when one expert receives all of it.

    Args:
        num_experts: Number of experts E >= 1.
    """

    higher_is_better = False

    def compute(self) -> Tensor:
        mean = self.gate_sum.mean()
        return (self.gate_sum.std(correction=0) / mean.clamp_min(1e-12)).float()


class SampleEntropy(_ExactStates):
    """Sample entropy: the mean over samples of the gate's entropy H(g(x)) in bits.

    0 when the gate is one-hot on every sample (a confident, crisp decomposition).

    Args:
        num_experts: Number of experts E >= 1.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, num_experts: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        self.num_experts = num_experts
        self.add_state("entropy_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, gate_probs: Tensor) -> None:
        """Add a batch of gate probabilities ``[B, E]``."""
        _check_gate(self, gate_probs)
        self.entropy_sum += entropy_bits(gate_probs.detach().double()).sum()
        self.total += gate_probs.shape[0]

    def compute(self) -> Tensor:
        return (self.entropy_sum / self.total.clamp_min(1)).float()


class _ClassGateMass(_ExactStates):
    """Gate mass per expert per class ``[E, C]`` and samples per class ``[C]`` (true labels)."""

    full_state_update = False

    def __init__(self, num_experts: int, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        check_positive_int("num_classes", num_classes)
        self.num_experts, self.num_classes = num_experts, num_classes
        self.add_state("mass", torch.zeros(num_experts, num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("class_counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def _add_mass(self, gate_probs: Tensor, labels: Tensor) -> None:
        _check_gate(self, gate_probs)
        _check_classes("labels", labels, gate_probs.shape[0])
        self.mass.index_add_(1, labels.long(), gate_probs.detach().double().T)
        self.class_counts += torch.bincount(labels.long(), minlength=self.num_classes)

    def allocation(self) -> Tensor:
        """Each class's mean gate distribution ``[E, C]`` (columns sum to 1; 0 for unseen classes)."""
        return self.mass / self.class_counts.clamp_min(1)


class PerTaskEntropy(_ClassGateMass):
    """Per-task entropy: the mean over classes of the entropy (bits) of the class's average gate.

    0 when every class goes to a single expert; classes not seen are left out.

    Args:
        num_experts: Number of experts E >= 1.
        num_classes: Number of classes C >= 1.
    """

    higher_is_better = False

    def update(self, gate_probs: Tensor, labels: Tensor) -> None:
        """Add gate probabilities ``[B, E]`` of samples with true labels ``[B]``."""
        self._add_mass(gate_probs, labels)

    def compute(self) -> Tensor:
        seen = self.class_counts > 0
        return entropy_bits(self.allocation(), dim=0)[seen].mean().nan_to_num(0.0).float()


class ExpertAllocation(_ClassGateMass):
    """Allocation matrix: the mean gate probability of each expert on each class, and per-expert accuracy.

    ``compute()`` returns a dict: ``allocation [E, C]`` (column c is class c's
    mean gate distribution), ``expert_accuracy [E]`` (accuracy of the chosen
    expert's prediction on the samples routed to it by the argmax of the gate,
    NaN when it got none), ``routed [E]`` (those sample counts),
    ``class_counts [C]``, ``usage [E]`` (mean gate probability) and
    ``histogram [E, bins]`` (counts of each expert's gate probability in
    ``bins`` equal bins of [0, 1]).

    Args:
        num_experts: Number of experts E >= 1.
        num_classes: Number of classes C >= 1.
        bins: Bins of the gate-probability histograms.
    """

    def __init__(self, num_experts: int, num_classes: int, bins: int = 20, **kwargs: object) -> None:
        super().__init__(num_experts, num_classes, **kwargs)
        check_positive_int("bins", bins)
        self.bins = bins
        self.add_state("routed", torch.zeros(num_experts, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(num_experts, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("histogram", torch.zeros(num_experts, bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, gate_probs: Tensor, labels: Tensor, predictions: Tensor) -> None:
        """Add gate probabilities ``[B, E]``, true labels ``[B]`` and the chosen expert's predictions ``[B]``."""
        self._add_mass(gate_probs, labels)
        _check_classes("predictions", predictions, gate_probs.shape[0])
        chosen = gate_probs.argmax(-1)
        self.routed += torch.bincount(chosen, minlength=self.num_experts)
        hits = chosen[predictions == labels]
        self.correct += torch.bincount(hits, minlength=self.num_experts)
        bin_index = (gate_probs.detach() * self.bins).long().clamp(0, self.bins - 1)
        cell = torch.arange(self.num_experts, device=gate_probs.device) * self.bins + bin_index
        self.histogram += torch.bincount(cell.flatten(), minlength=self.histogram.numel()).view_as(self.histogram)

    def compute(self) -> dict[str, Tensor]:
        total = self.class_counts.sum().clamp_min(1)
        return {
            "allocation": self.allocation().float(),
            "expert_accuracy": (self.correct.double() / self.routed.double()).float(),
            "routed": self.routed.clone(),
            "class_counts": self.class_counts.clone(),
            "usage": (self.mass.sum(1) / total).float(),
            "histogram": self.histogram.clone(),
        }


SCALAR_INPUTS: dict[str, tuple[str, ...]] = {
    "mutual_information": ("gate_probs", "predictions"),
    "mutual_information_label": ("gate_probs", "labels"),
    "sample_entropy": ("gate_probs",),
    "expert_usage": ("gate_probs",),
    "per_task_entropy": ("gate_probs", "labels"),
    "importance_cv": ("gate_probs",),
}


class DecompositionMetrics(MetricCollection):
    """The scalar decomposition metrics of one stage, logged as ``{prefix}<name>``.

    Names: ``mutual_information`` (class = the chosen expert's prediction),
    ``mutual_information_label`` (class = true label), ``sample_entropy``,
    ``expert_usage``, ``per_task_entropy``, ``importance_cv``.

    Args:
        num_experts: Number of experts E >= 1.
        num_classes: Number of classes C >= 1.
        prefix: Prepended to every name, e.g. ``"val/"``.
    """

    def __init__(self, num_experts: int, num_classes: int, prefix: str = "") -> None:
        metrics: dict[str, Metric] = {
            "mutual_information": MutualInformation(num_experts, num_classes),
            "mutual_information_label": MutualInformation(num_experts, num_classes),
            "sample_entropy": SampleEntropy(num_experts),
            "expert_usage": ExpertUsage(num_experts),
            "per_task_entropy": PerTaskEntropy(num_experts, num_classes),
            "importance_cv": ImportanceCV(num_experts),
        }
        super().__init__(metrics, prefix=prefix, compute_groups=False)

    def update_from(self, gate_probs: Tensor, labels: Tensor, predictions: Tensor) -> None:
        """Update every metric from gate probabilities ``[B, E]``, true labels and the chosen expert's predictions ``[B]``."""
        inputs = {"gate_probs": gate_probs.detach(), "labels": labels, "predictions": predictions}
        for name, metric in self.items(keep_base=True, copy_state=False):
            metric.update(*(inputs[key] for key in SCALAR_INPUTS[name]))


__all__ = [
    "DecompositionMetrics",
    "ExpertAllocation",
    "ExpertUsage",
    "ImportanceCV",
    "MutualInformation",
    "PerTaskEntropy",
    "SampleEntropy",
    "entropy_bits",
    "mutual_information_bits",
]
