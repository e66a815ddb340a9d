"""What a token-level MoE layer records of one call's routing, for metrics and callbacks."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Routing:
    """The routing of one :class:`~gmnn.nn.MoELayer` call, over its ``T`` flattened tokens.

    Every router fills the same fields, so metrics and callbacks (e.g.
    ``gmnn.callbacks.RoutingMonitor``) read them without running the router again.
    Tensors are detached unless a caller asked for them with gradients.

    Attributes:
        probs: Router probabilities ``[T, E]`` (softmax scores; sigmoid scores
            normalised per token; expert-choice and Soft MoE: the softmax over experts).
        selected: Chosen experts ``[T, k]`` (int64), sorted by decreasing weight;
            ``-1`` marks an empty slot (expert choice, where a token may get fewer
            than ``k`` experts). ``None`` for Soft MoE (no discrete choice).
        weights: Combine weights ``[T, k]`` of ``selected`` (0 at empty slots), or ``None``.
        logits: Raw router logits ``[T, E]`` before any bias or noise, or ``None``.
        dropped: ``[T, k]`` bool, pairs dropped by a capacity limit, or ``None``.
        mask: ``[T]`` bool, the tokens that count (``False`` for padding), or ``None`` (all count).
        losses: The call's unweighted balancing terms by name (``balance``, ``importance``, ``z``), or ``None``.
    """

    probs: Tensor
    selected: Tensor | None
    weights: Tensor | None = None
    logits: Tensor | None = None
    dropped: Tensor | None = None
    mask: Tensor | None = None
    losses: dict[str, Tensor] | None = None

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    @property
    def top1(self) -> Tensor:
        """Each token's first choice ``[T]``: ``selected[:, 0]`` where it exists, else the argmax of ``probs``."""
        if self.selected is not None and self.selected.shape[-1] > 0:
            first = self.selected[:, 0]
            return first.where(first >= 0, self.probs.argmax(-1))
        return self.probs.argmax(-1)
