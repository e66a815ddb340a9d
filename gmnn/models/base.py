"""The shared LightningModule: experts, gate, loss, optimizer, logging."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from gmnn.checkpoints.hooks import GateCheckpointHooks
from gmnn.checkpoints.reuse import load_experts
from gmnn.metrics import DecompositionMetrics, ExpertAllocation
from gmnn.models.checks import (
    check_input_shape,
    check_labels,
)
from gmnn.models.guards import StepGuards
from gmnn.models.optim import AdamOptimizer, Scheduler, check_optimizer_args
from gmnn.models.regularization import (
    RegularizerInputs,
    check_regularizers,
    regularizer_help,
    regularizer_values,
)
from gmnn.models.revival import output_layer, revival_of
from gmnn.models.running_mean import RunningMean
from gmnn.models.step_log import StageSteps, log_options
from gmnn.nn.functional.combine import (
    class_log_probs,
    dense_mixture,
    softmax_of_mixture,
)
from gmnn.nn.functional.regularizers import Distance, ImportanceStd, sample_distances
from gmnn.nn.functional.routing import softmax_routing
from gmnn.nn.functional.temperature import (
    check_temperature_schedule,
    scheduled_temperature,
)
from gmnn.nn.mixture.custom import check_network_spec
from gmnn.nn.mixture.experts import Experts
from gmnn.nn.mixture.networks import NETWORKS, NetworkSpec, build_network
from gmnn.nn.mixture.output import MoEOutput
from gmnn.pl import Callback, LightningModule
from gmnn.validation import check_choice, check_positive_int

STAGES = ("train", "val", "test")
Objective = Literal["mixture_likelihood", "softmax_of_mixture"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)
EVAL_STAGES = ("val", "test")


class MoEModule(GateCheckpointHooks, StepGuards, AdamOptimizer, StageSteps, LightningModule):
    """Base class of every gmnn mixture of experts (a dense mixture by default).

    Owns the experts, the gate, the task loss, the optimizer and the logging.
    The hooks a variant may override:
    networks :meth:`build_expert` / :meth:`build_gate` / :meth:`build_metrics`;
    routing :meth:`experts_and_gate` (experts and gate on a batch), :meth:`gate_logits` (how
    experts are scored), :meth:`combine` (how expert predictions are mixed), :meth:`forward` (sparse routing) and
    :meth:`expert_logit_layer` (the gate rows revival splits); the objective
    :meth:`loss_terms` (named terms summed into the loss) and
    :meth:`regularizer_terms`; :meth:`set_temperature` (per-epoch schedule);
    :meth:`log_step` / :meth:`log_task_metrics` (what is logged or added up per batch) and
    :meth:`log_epoch_metrics` (what is logged once an epoch);
    :meth:`predict_step`; and :meth:`configure_optimizers` / :meth:`make_adam`.
    A variant needing its own step (manual optimization) overrides
    ``training_step``, as :class:`~gmnn.models.dual_temperature.DualTemperatureMoE` does.

    Args:
        input_shape: Shape of one input, e.g. ``[2]`` or ``[1, 28, 28]`` (linked from the data).
        num_classes: Number of classes C (linked from the data).
        num_experts: Number of experts E >= 1.
        expert: Expert network: ``"mlp"``, ``"conv"`` (the paper's MNIST expert) or any module by
            ``{class_path: pkg.Module, init_args: {...}, hidden_from: <submodule>}`` (:mod:`gmnn.nn.mixture.custom`).
        expert_hidden: Hidden layer widths of each expert.
        expert_channels: Convolution filters of a ``"conv"`` expert.
        gate: Gate network, like ``expert`` (its ``out_features`` is the number of experts).
        gate_hidden: Hidden layer widths of the gate.
        gate_channels: Convolution filters of a ``"conv"`` gate.
        temperature: Gate softmax temperature T > 0.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        decoupled_weight_decay: Decay the weights directly (AdamW, Loshchilov & Hutter 2019) instead of
            adding ``weight_decay * w`` to the gradient (L2). With L2, Adam shrinks the weights of an
            expert whose loss gradient is small by about ``lr`` per step, whatever ``weight_decay`` is.
        batched_experts: Evaluate experts of one architecture as one vectorised call.
        regularizers: Weights >= 0 of gate regularizers added to the training loss, by name: {regularizers}.
            Each is logged unweighted as ``train/reg/<name>``.
        sample_distance: Distance of the sample-similarity loss on flattened inputs:
            ``"euclidean"`` or ``"cosine"``, divided by the batch maximum (override
            :meth:`sample_distances` to plug in e.g. features of a frozen network).
        allocation_temperature: Temperature > 0 of the ``allocation`` regularizers' target.
        temperature_decay: Inverse decay d >= 0 of the gate temperature:
            ``T_{e+1} = T_e / (1 + d (e - start))`` from epoch ``temperature_decay_start``.
        temperature_decay_start: First epoch of the decay.
        temperature_min: Floor of the decayed temperature (<= temperature).
        revive_below: 0 never revives experts. A threshold in (0, 1 / num_experts): at the end of
            each of the first ``revive_epochs`` training epochs, every expert whose mean gate
            probability over the epoch is below it is replaced by a noisy copy of the busiest expert,
            which shares that expert's gate mass (adds the callback
            :class:`~gmnn.models.revival.ReviveDeadExperts`).
        revive_epochs: Number of first epochs after which dead experts are revived.
        init_experts_from: Checkpoint of any gmnn variant whose experts initialise this model's
            (same count and architecture), e.g. to train a new gate on trained experts.
        freeze_experts: Keep the experts' parameters fixed (train only the gate).
        scheduler: Learning-rate schedule, stepped every batch: ``"none"`` (constant ``lr``),
            ``"cosine"`` (cosine decay from ``lr`` to 0) or ``"onecycle"`` (warm-up to ``lr``
            over the first 30% of steps, then cosine decay; Smith & Topin, 2019).
        objective: ``"mixture_likelihood"`` (default: ``log sum_i g_i p_i(y|x)``) or, in paper mode,
            ``"softmax_of_mixture"`` (:func:`gmnn.nn.functional.combine.softmax_of_mixture`, the reference's
            expectation model); only for variants whose output is the dense mixture.
        importance_std: ``"population"`` (default) or ``"unbiased"`` (paper mode: the reference's
            ``torch.std``) std in the ``importance`` regularizer.
    """

    min_num_classes: int = 2
    loads_every_gmnn_checkpoint = True  # MoEModule.load_from_checkpoint rebuilds any gmnn model (gmnn.checkpoints.variants)

    def __init__(
        self,
        input_shape: Sequence[int] = (2,),
        num_classes: int = 2,
        num_experts: int = 4,
        expert: NetworkSpec = "mlp",
        expert_hidden: Sequence[int] = (32,),
        expert_channels: int = 1,
        gate: NetworkSpec = "mlp",
        gate_hidden: Sequence[int] = (32,),
        gate_channels: int = 1,
        temperature: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        batched_experts: bool = True,
        regularizers: Mapping[str, float] | None = None,
        sample_distance: Distance | None = "euclidean",
        allocation_temperature: float = 1.0,
        temperature_decay: float = 0.0,
        temperature_decay_start: int = 0,
        temperature_min: float = 0.05,
        revive_below: float = 0.0,
        revive_epochs: int = 5,
        init_experts_from: str | None = None,
        freeze_experts: bool = False,
        scheduler: Scheduler = "none",
        objective: Objective = "mixture_likelihood",
        importance_std: ImportanceStd = "population",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_choice("objective", objective, OBJECTIVES)
        check_choice("importance_std", importance_std, get_args(ImportanceStd))
        self.input_shape = check_input_shape(input_shape)
        check_positive_int("num_classes", num_classes)
        if num_classes < self.min_num_classes:
            raise ValueError(f"num_classes must be >= {self.min_num_classes}, got {num_classes}")
        check_positive_int("num_experts", num_experts)
        check_network_spec("expert", expert, NETWORKS)
        check_network_spec("gate", gate, NETWORKS)
        check_temperature_schedule(temperature, temperature_decay, temperature_decay_start, temperature_min)
        self.regularizer_weights = check_regularizers(regularizers, sample_distance, allocation_temperature)
        check_optimizer_args(lr, weight_decay, scheduler)
        self.num_classes, self.num_experts = num_classes, num_experts
        self.temperature = float(temperature)
        self.experts = Experts(self.build_expert, num_experts, batched=batched_experts)
        self.gate = self.build_gate()
        revival_of(num_experts, revive_below, revive_epochs)  # checks; ReviveDeadExperts (configure_callbacks) revives
        if init_experts_from:
            load_experts(self.experts, init_experts_from)
        self.experts.requires_grad_(not freeze_experts)
        if objective != "mixture_likelihood" and not self.mixes_densely():
            raise ValueError(f"objective={objective!r} needs a dense mixture output; {type(self).__name__} allows 'mixture_likelihood'")
        self.build_metrics()
        self.gate_means = {stage: RunningMean() for stage in STAGES}  # summed per step, logged per epoch

    # ----------------------------------------------------------------- building
    def build_metrics(self) -> None:
        """Task metrics: accuracy per stage, decomposition metrics and allocation for val/test."""
        num_classes, num_experts = self.num_classes, self.num_experts
        self.metrics = nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro") for stage in STAGES}
        )
        self.decomposition = nn.ModuleDict(
            {stage: DecompositionMetrics(num_experts, num_classes, prefix=f"{stage}/") for stage in EVAL_STAGES}
        )
        self.allocation = nn.ModuleDict({stage: ExpertAllocation(num_experts, num_classes) for stage in EVAL_STAGES})

    def build_expert(self) -> nn.Module:
        """A fresh expert network mapping ``x`` to ``(logits [B, C], hidden [B, H])``."""
        hp = self.hparams
        return build_network(hp.expert, self.input_shape, self.num_classes, hp.expert_hidden, hp.expert_channels, "expert")

    def build_gate(self) -> nn.Module | None:
        """The gate network mapping ``x`` to ``(logits [B, E], hidden [B, H])``."""
        hp = self.hparams
        return build_network(hp.gate, self.input_shape, self.num_experts, hp.gate_hidden, hp.gate_channels, "gate")

    # ------------------------------------------------------------------ forward
    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` when ``x`` is not ``[B, *input_shape]``."""
        if tuple(x.shape[1:]) != self.input_shape or x.dim() != len(self.input_shape) + 1:
            raise ValueError(
                f"input must have shape [batch, {', '.join(map(str, self.input_shape))}] "
                f"(the model's input_shape), got {list(x.shape)}"
            )

    def gate_logits(self, x: Tensor, expert_hidden: Tensor) -> Tensor:
        """Score every expert for every sample: ``[B, E]``."""
        return self.gate(x)[0]

    def mixes_densely(self) -> bool:
        """Whether the output is :meth:`combine`'s dense mixture (where ``objective`` applies)."""
        cls = type(self)
        return cls.combine is MoEModule.combine and cls.forward is MoEModule.forward

    def combine(self, log_gate: Tensor, expert_log_probs: Tensor) -> Tensor:
        """Mix the experts' log-probabilities ``[B, E, C]`` into ``[B, C]`` (the ``objective``'s output)."""
        mixture = dense_mixture(log_gate, expert_log_probs)
        return softmax_of_mixture(mixture) if self.hparams.get("objective") == "softmax_of_mixture" else mixture

    def experts_and_gate(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(expert logits [B, E, C], expert hidden [B, E, H], gate logits [B, E])`` of a batch.

        With conv experts and a conv gate scored by :meth:`gate_logits` as defined here, their first
        convolutions run as one product (:meth:`~gmnn.nn.mixture.experts.Experts.forward_with_gate`).
        """
        if self.gate is not None and type(self).gate_logits is MoEModule.gate_logits:
            both = self.experts.forward_with_gate(self.gate, x)
            if both is not None:
                (expert_logits, expert_hidden), (gate_logits, _) = both
                return expert_logits, expert_hidden, gate_logits
        expert_logits, expert_hidden = self.experts(x)
        return expert_logits, expert_hidden, self.gate_logits(x, expert_hidden)

    def forward(self, x: Tensor) -> MoEOutput:
        self.check_input(x)
        expert_logits, expert_hidden, gate_logits = self.experts_and_gate(x)
        expert_log_probs = class_log_probs(expert_logits)
        log_gate = softmax_routing(gate_logits, self.temperature)
        return MoEOutput(
            log_probs=self.combine(log_gate, expert_log_probs),
            gate_probs=log_gate.exp(),
            gate_logits=gate_logits,
            expert_log_probs=expert_log_probs,
            selected=None,
            aux_loss=x.new_zeros(()),
            log_gate=log_gate,
        )

    # --------------------------------------------------------------------- loss
    def loss_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Named loss terms whose sum is minimised; ``"nll"`` is the task loss.

        Subclasses add terms (regularizers) by extending the returned dict.
        """
        terms = {"nll": F.nll_loss(out.log_probs, y)}
        if out.aux_loss.requires_grad:
            terms["aux"] = out.aux_loss
        if self.training and self.regularizer_weights:
            terms.update(self.regularizer_terms(out, x, y))
        return terms

    def regularizer_terms(self, out: MoEOutput, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Weighted regularizer terms; logs each unweighted value as ``train/reg/<name>``."""
        inputs = RegularizerInputs(
            out, y, self.temperature, self.hparams.allocation_temperature,
            distances=lambda: self.sample_distances(x),
            all_expert_log_probs=lambda: out.expert_log_probs if out.expert_log_probs is not None
            else class_log_probs(self.experts(x)[0]),
            importance_std=self.hparams.get("importance_std", "population"),
        )
        values = regularizer_values(self.regularizer_weights, inputs)
        if self._trainer is not None:
            logged = {f"train/reg/{k}": v.detach() for k, v in values.items()}
            self.log_dict(logged, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return {k: self.regularizer_weights[k] * v for k, v in values.items()}

    def sample_distances(self, x: Tensor) -> Tensor:
        """Pairwise sample distances ``[B, B]`` of the sample-similarity regularizer."""
        return sample_distances(x, self.hparams.sample_distance)

    # -------------------------------------------------------------- temperature
    def set_temperature(self, epoch: int) -> None:
        """Set the gate temperature of ``epoch`` from the schedule (a pure function of the epoch)."""
        hp = self.hparams
        self.temperature = scheduled_temperature(
            epoch, hp.temperature, hp.temperature_decay, hp.temperature_decay_start, hp.temperature_min
        )

    def on_train_start(self) -> None:
        """Train in training mode even after ``model.eval()`` before ``fit``: Lightning keeps the mode it finds,
        and gmnn's regularizers, noise and sampling act only in training mode."""
        if not self.training:
            self.train()

    @property
    def train_gate_mean(self) -> RunningMean:
        """The mean gate probabilities of the training epoch so far (what ``train/gate_prob/*`` logs)."""
        return self.gate_means["train"]

    def on_train_epoch_start(self) -> None:
        self.set_temperature(self.current_epoch)
        self.gate_means["train"].reset()
        self.log("train/temperature", self.temperature, on_step=False, on_epoch=True, batch_size=1)

    def check_labels(self, y: Tensor, stage: str = "train") -> None:
        """Raise ``ValueError`` when labels are not integers in ``[0, num_classes)`` (one host sync)."""
        check_labels(y, self.num_classes, f"{stage} batch")

    # -------------------------------------------------------------------- steps
    def shared_step(self, batch: Any, stage: str) -> tuple[Tensor, MoEOutput]:
        """Forward, loss and logging for one batch of ``stage`` (train/val/test)."""
        x, y = batch[0], batch[1]
        self.check_first_batch(x, y, stage)
        out = self(x)
        terms = self.loss_terms(out, x, y)
        loss = torch.stack(list(terms.values())).sum()
        if stage == "train":
            self.guard_finite(terms, labels_bad=None if y.device.type == "cpu" else self.labels_out_of_range(y))
        else:
            self.guard_batch(stage, terms["nll"] if "nll" in terms else loss, y)
        self.log_step(stage, loss, terms, out, y, batch_size=x.shape[0])
        return loss, out

    def log_step(self, stage: str, loss: Tensor, terms: dict[str, Tensor], out: MoEOutput, y: Tensor, batch_size: int) -> None:
        """Log the loss and its terms; add the gate probabilities and the task metrics up for the epoch's end.

        ``{stage}/gate_prob/expert_i`` and the metrics of :meth:`log_task_metrics` are logged once an
        epoch, by :meth:`log_epoch_metrics`: logging once an epoch keeps the E gate means, accuracy and
        six decomposition metrics (one ``self.log`` call each, none of them cheap) out of every step.
        """
        opts = self.log_options(stage, batch_size)
        self.log(f"{stage}/loss", loss, prog_bar=True, **opts)
        if len(terms) > 1:
            self.log_dict({f"{stage}/loss_{name}": value for name, value in terms.items()}, **opts)
        self.gate_means[stage].add(out.gate_probs.detach())
        self.log_task_metrics(stage, out, y, batch_size)

    log_options = staticmethod(log_options)  # the options of a per-batch mean (gmnn.models.step_log)

    def log_task_metrics(self, stage: str, out: MoEOutput, y: Tensor, batch_size: int) -> None:
        """Update the metrics built by :meth:`build_metrics` with a batch (accuracy; decomposition and allocation
        on val/test); :meth:`log_epoch_metrics` logs them."""
        self.metrics[f"{stage}_acc"].update(out.log_probs, y)
        if stage in self.decomposition:
            predictions = out.chosen_expert_log_probs().argmax(-1)
            self.decomposition[stage].update_from(out.gate_probs, y, predictions)
            self.allocation[stage].update(out.gate_probs, y, predictions)

    def log_epoch_metrics(self, stage: str) -> None:
        """Log, at the end of an epoch of ``stage``, what :meth:`log_step` added up over it.

        The torchmetrics ``Metric`` objects are logged as objects: Lightning computes them (a sum of
        states over processes under DDP, on every process at the same point) and resets them after
        the epoch, as when they are logged on every batch. ``{stage}/gate_prob/expert_i`` is this
        process's mean, synced in evaluation as a sample-weighted mean over processes (per process in
        training: no collective in ``on_train_epoch_end``).
        """
        if self.gate_means[stage].count == 0:  # no batch this epoch: nothing to log (a Metric never updated would warn)
            return
        self.log_gate_means(stage)
        self.log(f"{stage}/acc", self.metrics[f"{stage}_acc"], prog_bar=stage != "train", on_step=False, on_epoch=True)
        if stage in self.decomposition:
            self.log_dict(self.decomposition[stage], on_step=False, on_epoch=True)

    def log_gate_means(self, stage: str) -> None:
        """Log ``{stage}/gate_prob/expert_i``, the epoch's mean gate probability of each expert."""
        gate_means, training = self.gate_means[stage], stage == "train"
        self.log_dict(gate_means.as_logged(f"{stage}/gate_prob/expert_"), on_step=False, on_epoch=True,
                      batch_size=1 if training else float(gate_means.count), sync_dist=not training)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Class probabilities, predicted class and gate probabilities of a batch."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = self(x)
        probs = out.log_probs.exp()
        return {"probs": probs, "prediction": probs.argmax(-1), "gate_probs": out.gate_probs, "expert": out.chosen_expert}

    # -------------------------------------------------------------- checkpoints
    def on_train_epoch_end(self) -> None:
        self.log_epoch_metrics("train")

    def on_validation_epoch_start(self) -> None:
        self.gate_means["val"].reset()

    def on_test_epoch_start(self) -> None:
        self.gate_means["test"].reset()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # the batch guards (StepGuards)
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.log_epoch_metrics("test")

    def expert_logit_layer(self) -> nn.Linear | None:
        """The gate's output layer when its outputs are the expert logits (row i scores expert i), else ``None``."""
        return None if self.gate is None else output_layer(self.gate)

    def configure_callbacks(self) -> list[Callback]:
        """:class:`~gmnn.models.revival.ReviveDeadExperts` when ``revive_below > 0``."""
        from gmnn.models.revival import ReviveDeadExperts

        below = self.hparams.get("revive_below", 0.0)
        return [ReviveDeadExperts(below, self.hparams.revive_epochs)] if below > 0 else []


MoEModule.__doc__ = (MoEModule.__doc__ or "").replace("{regularizers}", regularizer_help())
