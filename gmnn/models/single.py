"""A single network as a baseline for the mixtures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from gmnn.models.base import MoEModule
from gmnn.nn.mixture.networks import build_network
from gmnn.validation import check_positive_int


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matched_hidden(
    expert: str, gate: str, input_shape: Sequence[int], num_classes: int, num_experts: int,
    expert_hidden: Sequence[int], gate_hidden: Sequence[int], expert_channels: int = 1, gate_channels: int = 1,
) -> list[int]:
    """Hidden widths (``expert_hidden`` scaled by one factor) giving about the parameter count
    of ``num_experts`` such experts plus the gate."""
    target = num_experts * _count(build_network(expert, input_shape, num_classes, expert_hidden, expert_channels))
    if num_experts > 1:
        target += _count(build_network(gate, input_shape, num_experts, gate_hidden, gate_channels))

    def widths(scale: float) -> list[int]:
        return [max(1, round(w * scale)) for w in expert_hidden]

    def size(hidden: list[int]) -> int:
        return _count(build_network(expert, input_shape, num_classes, hidden, expert_channels))

    low, high = 0.0, 1.0
    while size(widths(high)) < target:
        low, high = high, high * 2
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if size(widths(mid)) < target else (low, mid)
    return min((widths(low), widths(high)), key=lambda hidden: abs(size(hidden) - target))


class SingleModel(MoEModule):
    """One network instead of a mixture: the baseline of the paper's tables.

    The network is an expert (``expert``, ``expert_channels``) whose hidden
    widths are ``hidden``, or by default ``expert_hidden`` scaled so that it has
    about as many parameters as a mixture of ``matched_experts`` experts plus
    its gate (a class-path ``expert`` is built as configured, without matching). Logging is that of every gmnn model (the single "expert" has gate
    probability 1). ``num_experts`` is ignored (always 1).

    Args:
        matched_experts: Size of the mixture whose parameter count is matched.
        hidden: Explicit hidden widths (overrides the matching).
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`.
    """

    def __init__(self, matched_experts: int = 4, hidden: Sequence[int] | None = None, **kwargs: Any) -> None:
        check_positive_int("matched_experts", matched_experts)
        for width in hidden or ():
            check_positive_int("hidden", width)
        kwargs["num_experts"] = 1
        self.hidden = list(hidden) if hidden else None
        self._matched = matched_experts
        super().__init__(**kwargs)

    def build_expert(self) -> nn.Module:
        hp = self.hparams
        if isinstance(hp.expert, Mapping):  # a class-path network is built as configured, not size-matched
            return build_network(hp.expert, self.input_shape, self.num_classes, (), hp.expert_channels, "expert")
        if self.hidden is None:
            self.hidden = matched_hidden(
                hp.expert, hp.gate, self.input_shape, self.num_classes, self._matched,
                hp.expert_hidden, hp.gate_hidden, hp.expert_channels, hp.gate_channels,
            )
        return build_network(hp.expert, self.input_shape, self.num_classes, self.hidden, hp.expert_channels, "expert")

    def build_gate(self) -> nn.Module | None:
        return None

    def gate_logits(self, x: Tensor, expert_hidden: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], 1)
