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
        selected: Chosen experts ``[T, k]`` (int64); gmnn's routers sort them by
            decreasing weight, records read from other routers (e.g. DeepSeek's
            ``topk(sorted=False)``) need not be sorted: read the first choice with
            :attr:`top1`, never by position. ``-1`` marks an empty slot (expert choice, where a token may get fewer
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
        """Each token's first choice ``[T]``: the selected expert of highest weight, whatever its position.

        Ranked by ``weights`` where recorded, else by ``probs`` of the selected
        experts (monotone in the weights for every token-choice router); ties go
        to the earlier slot. A token without a selected expert (expert choice)
        or a record without selection (Soft MoE) takes the argmax of ``probs``.
        """
        fallback = self.probs.argmax(-1)
        if self.selected is None or self.selected.shape[-1] == 0:
            return fallback
        valid = self.selected >= 0
        rank = self.weights if self.weights is not None else self.probs.gather(-1, self.selected.clamp_min(0))
        rank = rank.float().masked_fill(~valid, float("-inf"))
        first = self.selected.gather(-1, rank.argmax(-1, keepdim=True)).squeeze(-1)
        return first.where(valid.any(-1), fallback)
