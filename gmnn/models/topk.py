"""Sparse top-k mixture of experts with real conditional computation."""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from gmnn.models.base import MoEModule
from gmnn.nn.functional.combine import class_log_probs, top_k_mixture
from gmnn.nn.functional.dispatch import capacity_of
from gmnn.nn.functional.losses import per_expert_nll, stochastic_mixture_loss
from gmnn.nn.functional.routing import softmax_routing, top_k_routing
from gmnn.nn.mixture.output import MoEOutput
from gmnn.validation import check_choice, check_non_negative

GateGradient = Literal["residual", "renormalize", "stochastic"]
GATE_GRADIENTS: tuple[str, ...] = get_args(GateGradient)
TrainExperts = Literal["routed", "all"]
TRAIN_EXPERTS: tuple[str, ...] = get_args(TrainExperts)


def check_top_k(k: int, num_experts: int, gate_gradient: str, allowed: tuple[str, ...] = GATE_GRADIENTS) -> None:
    """Validate ``k`` against ``num_experts`` and the gate-gradient mode (one of ``allowed``)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
        raise ValueError(f"k must be an integer in [1, num_experts={num_experts}], got {k!r}")
    check_choice("gate_gradient", gate_gradient, allowed)
    if k == 1 and gate_gradient == "renormalize":
        raise ValueError("gate_gradient='renormalize' with k=1 gives the gate no gradient; use 'residual' or k >= 2")


class TopKMoE(MoEModule):
    """Sparse mixture: each sample is routed to its k highest-scoring experts.

    Only the routed (sample, expert) pairs are computed (Shazeer et al., 2017).
    At inference the prediction is the mixture over the k experts with the
    gate softmax renormalised over them. While training, the gate must also
    learn when k = 1, where the renormalised weight is constantly 1; with
    ``gate_gradient="residual"`` (default) training uses the un-renormalised
    gate weights of the k experts and gives the remaining gate mass to the
    uniform distribution over classes. That is a proper distribution, equal to
    the dense mixture when k = E, and it raises an expert's gate weight on
    samples it predicts better than chance. ``"renormalize"`` trains with the
    renormalised mixture (k >= 2 only). ``"stochastic"`` trains the experts on
    the renormalised mixture of the routed experts and the gate, separately,
    with the stochastic mixture loss ``-log sum_i g_i exp(-L_i / 2)`` of
    Jacobs et al. (1991), ``L_i`` being every expert's per-sample loss computed
    without gradient (the paper's "top-1, gate trained with the stochastic
    loss" row; every expert runs forward while training, only the routed ones
    backward). The gate term is logged as ``train/loss_gate``. With
    ``train_experts="all"`` (paper mode, ``"stochastic"`` only) the whole loss is
    instead that stochastic mixture loss with gradients to every expert and the
    gate, as the reference trains its top-1 model with ``stochastic_loss``
    (``helper/moe_models.py`` lines 52-71 of yamsgithub/modular_deep_learning:
    every expert's loss, whichever expert was routed); the prediction is still
    the routed expert's.

    With ``capacity_factor > 0`` each expert takes at most
    ``ceil(capacity_factor * B * k / E)`` (sample, expert) pairs per batch
    (Fedus, Zoph & Shazeer, 2021, "Switch Transformers"); first choices are
    served before second choices. A dropped pair's expert is replaced by the
    uniform distribution over classes (the same residual that takes the
    unselected gate mass), so the output stays a proper distribution; the
    fraction of dropped pairs is logged as ``{stage}/overflow_fraction``.
    The capacity path has static shapes and no host sync; without a capacity
    the routed pairs are grouped by expert (one host sync for group sizes).

    Args:
        k: Experts per sample, ``1 <= k <= num_experts``.
        gate_gradient: ``"residual"``, ``"renormalize"`` or ``"stochastic"`` (see above).
        capacity_factor: 0 for no capacity limit, else a factor > 0 (e.g. 1.25).
        train_experts: With ``gate_gradient="stochastic"``: ``"routed"`` (gmnn's default) or ``"all"`` (see above).
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`.
    """

    def __init__(
        self, k: int = 1, gate_gradient: GateGradient = "residual", capacity_factor: float = 0.0,
        train_experts: TrainExperts = "routed", **kwargs: Any,
    ) -> None:
        check_top_k(k, kwargs.get("num_experts", 4), gate_gradient)
        check_non_negative("capacity_factor", capacity_factor)
        check_choice("train_experts", train_experts, TRAIN_EXPERTS)
        if train_experts == "all" and gate_gradient != "stochastic":
            raise ValueError(f"train_experts='all' needs gate_gradient='stochastic', got {gate_gradient!r}")
        self.train_experts = train_experts
        self.k = k
        self.capacity_factor = float(capacity_factor)
        super().__init__(**kwargs)

    def forward(self, x: Tensor) -> MoEOutput:
        self.check_input(x)
        gate_logits = self.gate_logits(x, None)
        log_gate = softmax_routing(gate_logits, self.temperature)
        _, indices = top_k_routing(gate_logits, self.k)
        dropped = None
        if self.capacity_factor > 0:
            capacity = capacity_of(x.shape[0], self.k, self.num_experts, self.capacity_factor)
            logits, kept = self.experts.forward_with_capacity(x, indices, capacity)
            dropped = ~kept
        else:
            logits = self.experts.forward_selected(x, indices)
        selected_log_probs = class_log_probs(logits)
        residual = self.training and self.hparams.gate_gradient == "residual"
        every_expert = None
        if self.training and self.hparams.gate_gradient == "stochastic":
            with torch.set_grad_enabled(self.train_experts == "all" and torch.is_grad_enabled()):
                every_expert = class_log_probs(self.experts(x)[0])
        return MoEOutput(
            log_probs=top_k_mixture(log_gate, indices, selected_log_probs, residual),
            gate_probs=log_gate.exp(),
            gate_logits=gate_logits,
            expert_log_probs=every_expert,
            selected=indices,
            aux_loss=x.new_zeros(()),
            selected_log_probs=selected_log_probs,
            dropped=dropped,
            log_gate=log_gate,
        )

    def loss_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The base terms, plus the gate's stochastic mixture loss ``gate`` with ``gate_gradient="stochastic"``
        (with ``train_experts="all"`` that loss replaces ``nll``)."""
        terms = super().loss_terms(out, x, y)
        if out.expert_log_probs is not None and self.hparams.gate_gradient == "stochastic":
            stochastic = stochastic_mixture_loss(out.log_gate, per_expert_nll(out.expert_log_probs, y))
            terms["nll" if self.train_experts == "all" else "gate"] = stochastic
        return terms

    def log_step(self, stage: str, loss: Tensor, terms: dict[str, Tensor], out: MoEOutput, y: Tensor, batch_size: int) -> None:
        """The base logging plus ``{stage}/overflow_fraction`` (dropped pairs) with a capacity."""
        super().log_step(stage, loss, terms, out, y, batch_size)
        if out.dropped is not None:
            self.log(f"{stage}/overflow_fraction", out.dropped.float().mean(), **self.log_options(stage, batch_size))
