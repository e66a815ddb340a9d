"""The ``Experts`` container: E expert networks evaluated together."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

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

    Experts of one architecture run as one batched computation: their
    parameters are stacked and the network is vectorised over the expert axis
    with ``torch.func.vmap``. Experts of different architectures (or with
    ``batched=False``) are evaluated one after the other.

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

    def _stacked_state(self) -> dict[str, Tensor]:
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
        template = self._template[0]

        def run_one(state: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            return functional_call(template, state, (x,))

        logits, hidden = vmap(run_one, randomness="different")(self._stacked_state())
        return logits.transpose(0, 1), hidden.transpose(0, 1)

    def forward_expert(self, index: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluate expert ``index`` on the rows ``x`` only (for sparse routing)."""
        return self.experts[index](x)

    def forward_selected(self, x: Tensor, indices: Tensor) -> Tensor:
        """Conditional computation: evaluate only the routed (sample, expert) pairs.

        Rows are grouped by expert, each expert runs once on its group, and
        the results are scattered back. The group sizes are read once on the
        host (one sync) to split the batch.

        Args:
            x: Inputs ``[B, ...]``.
            indices: Routed experts ``[B, k]``.

        Returns:
            Logits of the routed experts ``[B, k, C]``.
        """
        batch, k = indices.shape
        flat = indices.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        groups = x.index_select(0, order // k).split(counts)
        logits = [self.experts[e](rows)[0] for e, rows in enumerate(groups) if counts[e] > 0]
        grouped = torch.cat(logits)
        scattered = grouped.new_empty(grouped.shape).index_copy(0, order, grouped)
        return scattered.view(batch, k, -1)
