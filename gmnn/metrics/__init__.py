"""Metrics of how a mixture splits its task, in bits: torchmetrics ``Metric`` objects and their functional forms.

- :mod:`gmnn.metrics.decomposition`: the sample-level decomposition metrics (mutual information, expert
  usage, sample entropy, per-task entropy, importance CV, allocation);
- :mod:`gmnn.metrics.routing`: routing statistics of token-level MoE layers;
- :mod:`gmnn.metrics.functional`: the same quantities as functions of tensors.
"""

from gmnn.metrics.decomposition import (
    DecompositionMetrics,
    ExpertAllocation,
    ExpertUsage,
    ImportanceCV,
    MutualInformation,
    PerTaskEntropy,
    SampleEntropy,
)
from gmnn.metrics.functional import entropy_bits, mutual_information_bits
from gmnn.metrics.routing import ChangedFraction, RoutingStats, assignment, top1_changed

__all__ = [
    "ChangedFraction",
    "DecompositionMetrics",
    "ExpertAllocation",
    "ExpertUsage",
    "ImportanceCV",
    "MutualInformation",
    "PerTaskEntropy",
    "RoutingStats",
    "SampleEntropy",
    "assignment",
    "entropy_bits",
    "mutual_information_bits",
    "top1_changed",
]
