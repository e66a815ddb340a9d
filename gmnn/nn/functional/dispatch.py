"""Routing tokens to experts without dense one-hot dispatch tensors. Pure functions.

A routed (token, expert) pair is a *pair*; ``k`` pairs per token. Two ways
to run the pairs:

* exact (:func:`group_by_expert`): sort the pairs by expert and split them
  into one group per expert. The group sizes are read once on the host.
* with a capacity (:func:`capacity_slots`): every expert gets ``capacity``
  slots; a pair takes the next free slot of its expert, pairs beyond the
  capacity are dropped. Static shapes, no host sync (``torch.compile``
  friendly). The cost scales with ``E * capacity ≈ capacity_factor * tokens * k``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmnn.validation import check_positive, check_positive_int


def capacity_of(num_tokens: int, k: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ``ceil(capacity_factor * num_tokens * k / num_experts)``, at least 1.

    Raises:
        ValueError: ``capacity_factor`` is not a finite number > 0.
    """
    check_positive("capacity_factor", capacity_factor)
    check_positive_int("num_experts", num_experts)
    return max(1, min(num_tokens, math.ceil(capacity_factor * num_tokens * k / num_experts)))


def group_by_expert(flat_experts: Tensor, num_experts: int) -> tuple[Tensor, list[int]]:
    """Order of the pairs sorted by expert, and each expert's group size (one host sync).

    Args:
        flat_experts: Expert of every pair ``[N]``.
        num_experts: E.

    Returns:
        ``(order [N], counts)``: ``flat_experts[order]`` is sorted (stable), and
        ``counts[e]`` pairs go to expert e.
    """
    order = flat_experts.argsort(stable=True)
    counts = torch.bincount(flat_experts, minlength=num_experts).tolist()
    return order, counts


def capacity_slots(flat_experts: Tensor, num_experts: int, capacity: int,
                   valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Give every pair a slot ``expert * capacity + position`` in its expert's buffer.

    Pairs earlier in ``flat_experts`` get the earlier slots (put all first
    choices before second choices to give them priority). Pairs whose position
    reaches ``capacity`` are dropped and get the overflow slot ``E * capacity``;
    so are pairs outside ``valid`` (padding), which take no slot.

    Args:
        flat_experts: Expert of every pair ``[N]``.
        num_experts: E.
        capacity: Slots per expert.
        valid: ``[N]`` bool, the pairs that may take a slot, or ``None`` (all).

    Returns:
        ``(slots [N] in [0, E * capacity], kept [N] bool)``.
    """
    n = flat_experts.shape[0]
    if valid is not None:  # padding pairs queue behind a virtual expert E
        flat_experts = torch.where(valid, flat_experts, num_experts)
    order = flat_experts.argsort(stable=True)
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=flat_experts.device)
    counts = counts.scatter_add(0, flat_experts, torch.ones_like(flat_experts))
    starts = counts.cumsum(0) - counts
    sorted_position = torch.arange(n, device=flat_experts.device) - starts[flat_experts[order]]
    position = torch.empty_like(sorted_position).scatter(0, order, sorted_position)
    kept = position < capacity
    if valid is not None:
        kept = kept & valid
    slots = torch.where(kept, flat_experts * capacity + position, num_experts * capacity)
    return slots, kept


def gather_into_slots(x: Tensor, pair_token: Tensor, slots: Tensor, num_slots: int) -> Tensor:
    """Copy each kept pair's token row into its slot; empty slots hold zeros.

    Args:
        x: Token rows ``[T, ...]``.
        pair_token: Token of every pair ``[N]``.
        slots: Slot of every pair ``[N]`` from :func:`capacity_slots` (``num_slots`` = dropped).
        num_slots: ``E * capacity``.

    Returns:
        ``[num_slots, ...]``.
    """
    empty = x.shape[0]  # index of an appended zero row
    slot_token = torch.full((num_slots + 1,), empty, dtype=torch.long, device=x.device)
    slot_token = slot_token.scatter(0, slots, pair_token)[:num_slots]
    padded = torch.cat([x, x.new_zeros(1, *x.shape[1:])])
    return padded.index_select(0, slot_token)


def read_from_slots(outputs: Tensor, slots: Tensor) -> Tensor:
    """Each pair's row of ``outputs [num_slots, ...]``; dropped pairs read zeros. ``[N, ...]``."""
    padded = torch.cat([outputs, outputs.new_zeros(1, *outputs.shape[1:])])
    return padded.index_select(0, slots)
