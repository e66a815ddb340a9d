"""Mixture of experts for regression: a Gaussian mixture over the experts' means."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.regression import MeanSquaredError

from gmnn.metrics import ExpertUsage, SampleEntropy
from gmnn.models.base import EVAL_STAGES, STAGES, MoEModule
from gmnn.models.topk import check_top_k
from gmnn.nn.functional.losses import stochastic_mixture_loss
from gmnn.nn.functional.routing import softmax_routing
from gmnn.validation import check_non_negative, check_positive

GATE_ONLY_REGULARIZERS = ("importance", "similarity_same", "similarity_different", "load_balancing", "z_loss")


@dataclass
class RegressionOutput:
    """What :class:`RegressionMoE`'s ``forward`` returns.

    Attributes:
        mean: The prediction, the mixture mean ``[B, D]``.
        gate_probs: Gate probabilities over all experts ``[B, E]``.
        gate_logits: Raw gate scores ``[B, E]``.
        expert_means: Means of the computed experts ``[B, E, D]`` (dense) or ``[B, k, D]`` (top-k).
        expert_log_sigma: Their log standard deviations ``[B, E]`` or ``[B, k]``.
        log_weights: Log mixture weights of the computed experts ``[B, E]`` or ``[B, k]``.
        selected: Routed experts ``[B, k]`` (top-k), else ``None``.
        aux_loss: Scalar auxiliary loss (0).
        expert_log_probs: Always ``None`` (no class distributions in regression).
    """

    mean: Tensor
    gate_probs: Tensor
    gate_logits: Tensor
    expert_means: Tensor
    expert_log_sigma: Tensor
    log_weights: Tensor
    selected: Tensor | None
    aux_loss: Tensor
    expert_log_probs: None = None

    @property
    def chosen_expert(self) -> Tensor:
        """The expert with the largest gate probability per sample ``[B]``."""
        return self.gate_probs.argmax(dim=-1)


def gaussian_log_likelihood(y: Tensor, means: Tensor, log_sigma: Tensor) -> Tensor:
    """``log N(y; mean_i, sigma_i^2 I)`` of every expert ``[B, E]`` from ``y [B, D]``, means ``[B, E, D]``."""
    z = (y.unsqueeze(1) - means) / log_sigma.exp().unsqueeze(-1)
    dims = means.shape[-1]
    return -0.5 * z.pow(2).sum(-1) - dims * (log_sigma + 0.5 * math.log(2 * math.pi))


class RegressionMoE(MoEModule):
    """Mixture of experts for regression (Jacobs, Jordan, Nowlan & Hinton, 1991).

    Expert i predicts a mean ``mu_i(x)`` (its network's output, ``num_classes``
    = the number of targets D) with a learned standard deviation ``sigma_i``;
    the model is the Gaussian mixture ``sum_i g_i N(y; mu_i, sigma_i^2)``,
    trained by its negative log-likelihood (logsumexp, so a zero gate weight
    is harmless) and predicting the mixture mean ``sum_i g_i mu_i``.
    ``k = 0`` is the dense mixture; ``k >= 1`` routes each sample to its k
    best experts and computes only those (renormalised weights). With k = 1
    the renormalised weight is 1, so the gate is trained separately by the
    stochastic mixture loss over every expert's Gaussian loss computed without
    gradient (logged as ``train/loss_gate``).

    Logged: ``{stage}/loss``, ``{stage}/mse``, ``{stage}/gate_prob/expert_i``,
    and on val/test ``sample_entropy`` and ``expert_usage`` (bits).

    Args:
        k: 0 for the dense mixture, else the number of experts per sample.
        init_sigma: Initial standard deviation > 0 of every expert.
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`; ``num_classes``
            is the number of regression targets D (linked from the data). Only the
            gate regularizers (``importance``, ``similarity_*``, ``load_balancing``,
            ``z_loss``) apply.
    """

    min_num_classes = 1

    def __init__(self, k: int = 0, init_sigma: float = 1.0, **kwargs: Any) -> None:
        check_non_negative("k", k)
        if k:  # the k = 1 gate learns from the stochastic mixture loss (see loss_terms)
            check_top_k(k, kwargs.get("num_experts", 4), gate_gradient="stochastic")
        check_positive("init_sigma", init_sigma)
        unsupported = set(kwargs.get("regularizers") or {}) - set(GATE_ONLY_REGULARIZERS)
        if unsupported:
            raise ValueError(f"regularizers of RegressionMoE must be among {GATE_ONLY_REGULARIZERS}, got {sorted(unsupported)}")
        self.k = k
        super().__init__(**kwargs)
        self.log_sigma = nn.Parameter(torch.full((self.num_experts,), math.log(init_sigma)))

    def build_metrics(self) -> None:
        self.metrics = nn.ModuleDict({f"{stage}_mse": MeanSquaredError() for stage in STAGES})
        self.gate_metrics = nn.ModuleDict(
            {f"{stage}_{name}": metric(self.num_experts) for stage in EVAL_STAGES
             for name, metric in (("sample_entropy", SampleEntropy), ("expert_usage", ExpertUsage))}
        )

    def labels_out_of_range(self, y: Tensor) -> Tensor | None:
        """Regression targets are real numbers: no range to check."""
        return None

    def check_first_batch(self, x: Tensor, y: Tensor, stage: str) -> None:
        """Targets must be floats ``[B, D]`` (no host sync)."""
        if not y.is_floating_point() or tuple(y.shape) != (x.shape[0], self.num_classes):
            raise ValueError(
                f"{stage} batch: regression targets must be floats of shape [{x.shape[0]}, {self.num_classes}], "
                f"got {y.dtype} {list(y.shape)}"
            )

    def forward(self, x: Tensor) -> RegressionOutput:
        self.check_input(x)
        gate_logits = self.gate(x)[0]
        log_gate = softmax_routing(gate_logits, self.temperature)
        log_sigma = self.log_sigma.expand(x.shape[0], -1)
        selected = None
        if self.k:
            selected = log_gate.topk(self.k, dim=-1).indices
            means = self.experts.forward_selected(x, selected)
            log_sigma = log_sigma.gather(1, selected)
            log_weights = torch.log_softmax(log_gate.gather(1, selected), dim=-1)
        else:
            means = self.experts(x)[0]
            log_weights = log_gate
        return RegressionOutput(
            mean=(log_weights.exp().unsqueeze(-1) * means).sum(1), gate_probs=log_gate.exp(), gate_logits=gate_logits,
            expert_means=means, expert_log_sigma=log_sigma, log_weights=log_weights, selected=selected,
            aux_loss=x.new_zeros(()),
        )

    def loss_terms(self, out: RegressionOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """Gaussian-mixture NLL (``nll``), the k = 1 gate loss (``gate``) and the regularizers."""
        log_likelihood = gaussian_log_likelihood(y, out.expert_means, out.expert_log_sigma)
        terms = {"nll": -torch.logsumexp(out.log_weights + log_likelihood, dim=-1).mean()}
        if self.training and self.k == 1:
            with torch.no_grad():
                every = gaussian_log_likelihood(y, self.experts(x)[0], self.log_sigma.expand(x.shape[0], -1))
            log_gate = softmax_routing(out.gate_logits, self.temperature)
            terms["gate"] = stochastic_mixture_loss(log_gate, -2 * every)
        if self.training and self.regularizer_weights:
            terms.update(self.regularizer_terms(out, x, y))  # type: ignore[arg-type]
        return terms

    def log_task_metrics(self, stage: str, out: RegressionOutput, y: Tensor, batch_size: int) -> None:  # type: ignore[override]
        """Update the mean squared error (and the gate metrics on val/test); :meth:`log_epoch_metrics` logs them."""
        self.metrics[f"{stage}_mse"].update(out.mean.detach(), y)
        if stage in EVAL_STAGES:
            for name in ("sample_entropy", "expert_usage"):
                self.gate_metrics[f"{stage}_{name}"].update(out.gate_probs.detach())

    def log_epoch_metrics(self, stage: str) -> None:
        """``{stage}/gate_prob/expert_i``, ``{stage}/mse`` and on val/test ``sample_entropy`` and ``expert_usage``."""
        if self.gate_means[stage].count == 0:
            return
        self.log_gate_means(stage)
        self.log(f"{stage}/mse", self.metrics[f"{stage}_mse"], prog_bar=stage != "train", on_step=False, on_epoch=True)
        if stage in EVAL_STAGES:
            for name in ("sample_entropy", "expert_usage"):
                self.log(f"{stage}/{name}", self.gate_metrics[f"{stage}_{name}"], on_step=False, on_epoch=True)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Mixture mean, gate probabilities and chosen expert of a batch."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = self(x)
        return {"prediction": out.mean, "gate_probs": out.gate_probs, "expert": out.chosen_expert}
