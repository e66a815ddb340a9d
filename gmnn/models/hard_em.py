"""Hard expectation-maximisation: each sample is assigned to one expert, which alone learns it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor

from gmnn.models.base import MoEModule
from gmnn.nn.functional.losses import (
    HARD_EM_M_STEPS,
    HardEMStep,
    hard_assignment,
    hard_em_loss,
)
from gmnn.nn.mixture.output import MoEOutput
from gmnn.validation import check_choice


class HardEMMoE(MoEModule):
    """Mixture of experts trained by hard EM (winner-take-all assignments).

    E step, on every training batch with the current model and no gradient:
    each sample goes to the expert ``a = argmax_i g_i(x) p_i(y|x)``, the
    expert with the largest posterior responsibility (the reference's
    ``moe_models/moe_em_model.py``, lines 135-154 of
    ``yamsgithub/modular_deep_learning``). M step, the loss of that batch:

    - ``m_step="complete_data"`` (default, textbook hard EM): the negative
      complete-data log-likelihood ``-log g_a(x) - log p_a(y|x)``: the
      assigned expert learns the sample and the gate learns to pick it.
    - ``m_step="gate_weighted"`` (the reference, ``moe_em_model.py`` lines
      172-189): ``-g_a(x) log(p_a(y|x) + 1e-7)``, the assigned expert's
      log-likelihood weighted by its gate probability, differentiated through
      both. Its gradient *lowers* ``g_a`` on the samples the assigned expert
      gets wrong; the gate then learns only through the assignments.

    Differences from the reference, stated: the reference keeps one assignment
    per training sample (initialised uniformly at random) and re-assigns only
    128 randomly drawn samples per epoch, then takes 100 steps on random
    batches of 32; gmnn re-assigns every sample of the batch it trains on (its
    batches carry no sample index), so assignments are never stale.

    Inference routes each sample to the expert with the largest gate
    probability and predicts with it alone (``selected``), as the reference's
    ``forward`` does. The loss of every stage is the M-step loss.

    Args:
        m_step: ``"complete_data"`` or ``"gate_weighted"`` (see above).
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`.
    """

    def __init__(self, m_step: HardEMStep = "complete_data", **kwargs: Any) -> None:
        check_choice("m_step", m_step, HARD_EM_M_STEPS)
        super().__init__(**kwargs)

    def forward(self, x: Tensor) -> MoEOutput:
        out = super().forward(x)
        chosen = out.chosen_expert.unsqueeze(-1)
        return replace(out, log_probs=out.chosen_expert_log_probs(), selected=chosen)

    def loss_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """``nll`` is the M-step loss of the E-step assignments; regularizers as in the base class."""
        terms = super().loss_terms(out, x, y)
        assigned = hard_assignment(out.log_gate, out.expert_log_probs, y)
        terms["nll"] = hard_em_loss(out.log_gate, out.expert_log_probs, y, assigned, self.hparams.m_step)
        return terms
