"""Routing statistics of token-level MoE layers as torchmetrics ``Metric`` objects (every state a sum: exact under DDP).

Load and z follow Fedus et al. (2021) / Zoph et al. (2022); the mutual information between
top-1 expert and a per-token label follows Krishnamurthy et al. (2023).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from gmnn.metrics.functional import entropy_bits, mutual_information_bits
from gmnn.nn.moe.record import Routing
from gmnn.validation import check_non_negative, check_positive_int


def assignment(routing: Routing) -> Tensor:
    """Each token's routed experts as a ``[T, E]`` 0/1 matrix (Soft MoE: the probabilities), padding rows 0."""
    if routing.selected is None:
        assigned = routing.probs.float()
    else:
        chosen = routing.selected
        assigned = torch.zeros_like(routing.probs, dtype=torch.float32).scatter_add(
            -1, chosen.clamp_min(0), (chosen >= 0).float())
    return assigned if routing.mask is None else assigned * routing.mask.unsqueeze(-1).float()


class RoutingStats(Metric):
    """Routing statistics of one MoE layer over many calls; every state is a sum (exact under DDP).

    ``compute()`` returns (bits where entropies): ``usage`` (entropy of the
    experts' share of routed token-expert pairs; log2 E when balanced),
    ``imbalance`` (max / mean load; 1 when balanced), ``dead_experts`` (experts
    whose share is below ``dead_fraction / E``), ``dropped`` (fraction of pairs
    dropped by capacity), ``router_z`` (mean ``logsumexp(logits)^2``, NaN without
    logits), and with labels ``mutual_information`` I(top-1 expert; label),
    ``label_entropy`` (mean over labels of the entropy of the label's top-1
    expert distribution) and ``label_marginal_entropy`` H(label), so that
    ``min(log2 E, H(label))`` is the ceiling of the mutual information.
    :meth:`matrices` gives ``joint [E, L]`` (top-1 expert x label counts),
    ``load [E]`` and ``coactivation [E, E]`` (tokens routed to both experts).

    Args:
        num_experts: Experts E of the layer.
        num_labels: Label values L (0: no labels).
        dead_fraction: An expert is dead below this fraction of the fair share 1/E.
    """

    full_state_update = False

    def __init__(self, num_experts: int, num_labels: int = 0, dead_fraction: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        check_non_negative("num_labels", num_labels)
        check_non_negative("dead_fraction", dead_fraction)
        self.num_experts, self.num_labels, self.dead_fraction = num_experts, int(num_labels), float(dead_fraction)
        e, l64 = num_experts, torch.float64
        self.add_state("load", torch.zeros(e, dtype=l64), dist_reduce_fx="sum")
        self.add_state("coactivation", torch.zeros(e, e, dtype=l64), dist_reduce_fx="sum")
        self.add_state("joint", torch.zeros(e, max(1, self.num_labels), dtype=l64), dist_reduce_fx="sum")
        for name in ("tokens", "dropped", "z_sum", "z_tokens"):
            self.add_state(name, torch.zeros((), dtype=l64), dist_reduce_fx="sum")

    def update(self, routing: Routing, labels: Tensor | None = None) -> None:
        """Add one call's routing (``T`` tokens) and optional per-token labels (``T`` values; < 0 ignored)."""
        assigned = assignment(routing)  # padding rows are 0
        mask = routing.mask
        tokens = assigned.shape[0] if mask is None else mask.sum()
        self.tokens += tokens
        self.load += assigned.sum(0).double()  # its sum: the routed (token, expert) pairs
        self.coactivation += (assigned.t() @ assigned).double()
        if routing.dropped is not None:
            dropped = routing.dropped & (routing.selected >= 0)
            self.dropped += (dropped if mask is None else dropped & mask.unsqueeze(-1)).sum()
        z = (routing.losses or {}).get("z")  # the layer's own masked mean z-loss, when it computed one
        if z is not None:
            self.z_sum += z.double() * tokens
            self.z_tokens += tokens
        elif routing.logits is not None:
            z_tokens = torch.logsumexp(routing.logits.float(), -1).pow(2)
            self.z_sum += (z_tokens if mask is None else z_tokens * mask).sum().double()
            self.z_tokens += tokens
        if labels is not None and self.num_labels > 0:
            labels = labels.reshape(-1).long()
            counted = (labels >= 0) & (labels < self.num_labels)
            counted = (counted if mask is None else counted & mask).double()
            cell = routing.top1 * self.num_labels + labels.clamp(0, self.num_labels - 1)
            self.joint.view(-1).index_add_(0, cell, counted)

    def matrices(self) -> dict[str, Tensor]:
        """``joint [E, L]``, ``load [E]`` and ``coactivation [E, E]`` (synced under DDP like ``compute``)."""
        return {"joint": self.joint.clone(), "load": self.load.clone(), "coactivation": self.coactivation.clone()}

    def compute(self) -> dict[str, Tensor]:
        share = self.load / self.load.sum().clamp_min(1e-12)
        per_label = self.joint / self.joint.sum(0, keepdim=True).clamp_min(1e-12)
        seen = self.joint.sum(0) > 0
        labels = self.joint.sum(0) / self.joint.sum().clamp_min(1e-12)
        nan = torch.full((), float("nan"), dtype=torch.float64, device=share.device)
        values = {
            "usage": entropy_bits(share),
            "imbalance": share.max() / share.mean().clamp_min(1e-12),
            "dead_experts": (share < self.dead_fraction / self.num_experts).sum().double(),
            "dropped": self.dropped / self.load.sum().clamp_min(1),
            "router_z": self.z_sum / self.z_tokens if self.z_tokens > 0 else nan,
        }
        if self.num_labels > 0:
            values["mutual_information"] = mutual_information_bits(self.joint).double()
            values["label_entropy"] = (entropy_bits(per_label, dim=0) * seen).sum() / seen.sum().clamp_min(1)
            values["label_marginal_entropy"] = entropy_bits(labels)
        return {name: value.float() + 0.0 for name, value in values.items()}  # + 0.0: no "-0.0"


def top1_changed(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per layer, the fraction of tokens whose top-1 expert differs between two routings of the same tokens."""
    return {name: (after[name] != before[name]).float().mean() for name in after if name in before}


class ChangedFraction(Metric):
    """Fraction of ``True`` over all updates (exact under DDP)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("changed", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, changed: Tensor) -> None:
        self.changed += changed.double().sum()
        self.total += changed.numel()

    def compute(self) -> Tensor:
        return (self.changed / self.total.clamp_min(1)).float()
