"""The typed result of a mixture-of-experts forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class MoEOutput:
    """What every MoE variant's ``forward`` returns.

    Attributes:
        log_probs: Log-probabilities of the whole model ``[B, C]``.
        gate_probs: Gate probabilities over all experts ``[B, E]`` (after temperature).
        gate_logits: Raw gate scores ``[B, E]`` before temperature (``None`` for gate-less models).
        expert_log_probs: Every expert's log-probabilities ``[B, E, C]``, or
            ``None`` when only the routed experts were computed.
        selected: Indices of the routed experts ``[B, k]`` for sparse variants, else ``None``.
        aux_loss: Scalar auxiliary loss added to the training loss (0 when unused).
    """

    log_probs: Tensor
    gate_probs: Tensor
    gate_logits: Tensor | None
    expert_log_probs: Tensor | None
    selected: Tensor | None
    aux_loss: Tensor

    @property
    def chosen_expert(self) -> Tensor:
        """The expert with the largest gate probability per sample ``[B]``."""
        return self.gate_probs.argmax(dim=-1)
