"""The ``Experts`` container: E expert networks evaluated together."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from gmnn.nn.functional.dispatch import capacity_slots, gather_into_slots, group_by_expert, read_from_slots
from gmnn.nn.mixture.stacked import convnets_and_gate_stacked, shares_first_conv, stacked_forward
from gmnn.validation import check_positive_int


def _same_architecture(modules: nn.ModuleList) -> bool:
    first = modules[0]
    shapes = [(name, p.shape) for name, p in first.named_parameters()]
    buffers = [(name, b.shape) for name, b in first.named_buffers()]
    return all(
        type(m) is type(first)
        and [(n, p.shape) for n, p in m.named_parameters()] == shapes
        and [(n, b.shape) for n, b in m.named_buffers()] == buffers
        for m in modules
    )


class Experts(nn.Module):
    """E expert networks, each mapping ``x`` to ``(logits [B, C], hidden [B, H])``.

    Experts of one architecture run as one batched computation from their
    stacked parameters (see :mod:`gmnn.nn.mixture.stacked`): the paper's MLP and conv
    experts as wide/batched matmuls and one (grouped) convolution, any other
    network through ``torch.func.vmap``. Experts of different architectures
    (or with ``batched=False``) are evaluated one after the other. Each
    expert stays a plain module (``experts[i]``, state-dict keys
    ``experts.{i}.*``); its parameters are stacked once per forward.

    Args:
        factory: Called once per expert with no arguments; returns a fresh network.
        num_experts: Number of experts E.
        batched: Use the vectorised path when the experts share one architecture.
    """

    def __init__(self, factory: Callable[[], nn.Module], num_experts: int, batched: bool = True) -> None:
        super().__init__()
        check_positive_int("num_experts", num_experts)
        self.experts = nn.ModuleList(factory() for _ in range(num_experts))
        self.batched = batched and _same_architecture(self.experts)
        self._template = [copy.deepcopy(self.experts[0]).to("meta")] if self.batched else []

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def __getitem__(self, index: int) -> nn.Module:
        return self.experts[index]

    def stacked_state(self) -> dict[str, Tensor]:
        """Every parameter and buffer stacked over experts: ``{name: [E, ...]}``."""
        named = [dict(m.named_parameters()) | dict(m.named_buffers()) for m in self.experts]
        return {name: torch.stack([state[name] for state in named]) for name in named[0]}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluate every expert on every sample.

        Returns:
            ``(logits [B, E, C], hidden [B, E, H])``.
        """
        if not self.batched:
            outputs = [expert(x) for expert in self.experts]
            return torch.stack([o[0] for o in outputs], 1), torch.stack([o[1] for o in outputs], 1)
        logits, hidden = stacked_forward(self._template[0], self.stacked_state(), x, shared=True)
        return logits.transpose(0, 1), hidden.transpose(0, 1)

    def forward_with_gate(self, gate: nn.Module, x: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
        """``(self(x), gate(x))`` with the first convolution of the conv experts and of a conv gate as one
        product (:func:`~gmnn.nn.mixture.stacked.convnets_and_gate_stacked`); ``None`` when they cannot share it."""
        if not self.batched or not shares_first_conv(self._template[0], gate):
            return None
        (logits, hidden), gate_out = convnets_and_gate_stacked(self._template[0], self.stacked_state(), gate, x)
        return (logits.transpose(0, 1), hidden.transpose(0, 1)), gate_out

    def forward_grouped(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluate expert e on its own rows ``x[e]``: ``x [E, N, ...]`` -> ``([E, N, C], [E, N, H])``."""
        if not self.batched:
            outputs = [expert(rows) for expert, rows in zip(self.experts, x)]
            return torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])
        return stacked_forward(self._template[0], self.stacked_state(), x, shared=False)

    def forward_expert(self, index: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluate expert ``index`` on the rows ``x`` only (for sparse routing)."""
        return self.experts[index](x)

    def forward_selected(self, x: Tensor, indices: Tensor) -> Tensor:
        """Conditional computation: evaluate only the routed (sample, expert) pairs.

        The pairs are grouped by expert; the group sizes are read once on the
        host (one sync; :meth:`forward_with_capacity` has none). When the
        routing is balanced enough (``E * largest group <= 2 * B * k``),
        homogeneous experts run in one batched call on per-expert buffers as
        long as the largest group, rounded up to a multiple of 16 so that
        kernels see few distinct shapes. Otherwise each expert with a
        non-empty group runs once on exactly its rows. Either way the work
        is at most about ``2 * B * k`` expert evaluations, never ``B * E``.

        Args:
            x: Inputs ``[B, ...]``.
            indices: Routed experts ``[B, k]``.

        Returns:
            Logits of the routed experts ``[B, k, C]``.
        """
        batch, k = indices.shape
        order, counts = group_by_expert(indices.reshape(-1), self.num_experts)
        padded = -(-max(counts) // 16) * 16
        if self.batched and self.num_experts * padded <= 2 * batch * k:
            return self.forward_with_capacity(x, indices, padded)[0]
        groups = x.index_select(0, order // k).split(counts)
        logits = [self.experts[e](rows)[0] for e, rows in enumerate(groups) if counts[e] > 0]
        grouped = torch.cat(logits)
        scattered = grouped.new_empty(grouped.shape).index_copy(0, order, grouped)
        return scattered.view(batch, k, -1)

    def forward_with_capacity(self, x: Tensor, indices: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
        """Conditional computation with ``capacity`` slots per expert (no host sync).

        Every expert runs once on a buffer of ``capacity`` rows (one batched
        call for homogeneous experts). First choices (``indices[:, 0]``) take
        slots before second choices, earlier samples before later ones; pairs
        that find their expert full are dropped: their logits are zeros, i.e.
        the uniform distribution over classes.

        Args:
            x: Inputs ``[B, ...]``.
            indices: Routed experts ``[B, k]``.
            capacity: Slots per expert >= 1.

        Returns:
            ``(logits [B, k, C], kept [B, k] bool)``.
        """
        check_positive_int("capacity", capacity)
        batch, k = indices.shape
        slots, kept = capacity_slots(indices.t().reshape(-1), self.num_experts, capacity)
        pair_token = torch.arange(batch, device=x.device).repeat(k)
        rows = gather_into_slots(x, pair_token, slots, self.num_experts * capacity)
        logits, _ = self.forward_grouped(rows.view(self.num_experts, capacity, *x.shape[1:]))
        pair_logits = read_from_slots(logits.reshape(self.num_experts * capacity, -1), slots)
        return pair_logits.view(k, batch, -1).transpose(0, 1), kept.view(k, batch).t()
