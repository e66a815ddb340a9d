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
        selected: Indices of the routed experts ``[B, k]`` for sparse variants
            (sorted by decreasing gate weight), else ``None``.
        aux_loss: Scalar auxiliary loss added to the training loss (0 when unused).
        selected_log_probs: Log-probabilities of the routed experts ``[B, k, C]``
            for sparse variants, else ``None``.
        dropped: ``[B, k]`` bool, the routed pairs dropped by an expert's
            capacity (top-k with a capacity factor), else ``None``.
        log_gate: ``log gate_probs`` ``[B, E]`` as computed by the forward pass (a log-softmax,
            finite where a probability underflows to 0), for losses that need it; ``None`` when
            a variant does not provide it.
    """

    log_probs: Tensor
    gate_probs: Tensor
    gate_logits: Tensor | None
    expert_log_probs: Tensor | None
    selected: Tensor | None
    aux_loss: Tensor
    selected_log_probs: Tensor | None = None
    dropped: Tensor | None = None
    log_gate: Tensor | None = None

    @property
    def chosen_expert(self) -> Tensor:
        """The expert with the largest gate probability per sample ``[B]``."""
        return self.gate_probs.argmax(dim=-1)

    def chosen_expert_log_probs(self) -> Tensor:
        """Log-probabilities ``[B, C]`` of each sample's chosen expert (largest gate probability)."""
        if self.expert_log_probs is not None:
            index = self.chosen_expert.view(-1, 1, 1).expand(-1, 1, self.expert_log_probs.shape[-1])
            return self.expert_log_probs.gather(1, index).squeeze(1)
        if self.selected_log_probs is not None:
            return self.selected_log_probs[:, 0]
        raise ValueError("this output holds no expert predictions (neither expert_log_probs nor selected_log_probs)")
