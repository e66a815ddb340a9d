"""RoutingMonitor: how the MoE layers of any LightningModule route, per layer, every epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gmnn.analysis.capture import RoutingCapture
from gmnn.analysis.plots import routing_figure
from gmnn.callbacks.figures import tensorboard_writer
from gmnn.metrics.routing import ChangedFraction, RoutingStats
from gmnn.pl import Callback, LightningModule, Trainer, rank_zero_warn
from gmnn.validation import check_choice, check_non_negative

STAGES = ("train", "val", "test")
#: the scalars logged per layer and stage, as ``{stage}/routing/{layer}/{name}``
SERIES = ("usage", "imbalance", "dead_experts", "dropped", "router_z", "mutual_information", "label_entropy")


class RoutingMonitor(Callback):
    """Logs how every MoE layer routes tokens, per layer, and draws TensorBoard figures.

    Finds gmnn ``MoELayer``s, Hugging Face MoE blocks (through their router's
    output) or, for gmnn's image variants, the model's gate
    (:func:`gmnn.analysis.find_moe_layers`); forward hooks keep each layer's
    last routing, so nothing runs the router twice. Per stage in ``stages`` and
    layer it accumulates :class:`gmnn.analysis.RoutingStats` (torchmetrics
    sums) over the epoch and at the epoch's end logs (the states are synced
    there, where every rank is in lockstep: training in the epoch's last
    ``on_train_batch_end``, never in ``on_train_epoch_end``, where the
    rank-zero progress bar syncs its own metrics; evaluation in
    ``on_validation_epoch_end`` / ``on_test_epoch_end``)
    ``{stage}/routing/{layer}/{name}`` for ``usage``, ``imbalance``,
    ``dead_experts``, ``dropped``, ``router_z`` and, when batches carry a label
    per token, ``mutual_information`` (bits, I(top-1 expert; label)) and
    ``label_entropy``. Routing stability (Zoph et al., 2022, discuss
    late-changing routes): the fraction of tokens of a fixed probe (the first
    ``probe_size`` sequences of the first training batch) whose top-1 expert
    changed since the previous training epoch (the first epoch compares with
    the routing before training; read at the epoch's last step), logged as ``train/routing/{layer}/stability``.
    Figures (global rank zero, after the sync; only with a TensorBoard
    logger) for the evaluation stages, ``val/routing/{layer}`` (and ``test/``):
    expert x label heatmap, usage bars, co-activation matrix and the stability
    history (none for training: drawing costs more than an epoch of updates).
    A model with no MoE layer gets one warning; the monitor then does nothing (no probe, no hooks, no logs).

    Args:
        stages: Stages to monitor, from ``train``, ``val``, ``test``.
        label_index: Index of the per-token label in a batch tuple (default the last entry:
            the source of ``MixedSourceTextDataModule``, an image model's class); ``None``: no labels.
        num_labels: Label values; 0 takes the data module's ``num_labels`` (else ``num_classes``, else the model's).
        dead_fraction: An expert is dead below this fraction of the fair share 1/E of routed pairs.
        probe_size: Sequences (samples) in the stability probe (0: no stability).
        figures_every_n_epochs: Draw validation figures every n-th epoch (0: only after testing).
    """

    def __init__(self, stages: Sequence[str] = ("train", "val"), label_index: int | None = -1, num_labels: int = 0,
                 dead_fraction: float = 0.1, probe_size: int = 16, figures_every_n_epochs: int = 1) -> None:
        super().__init__()
        for stage in stages:
            check_choice("stages", stage, STAGES)
        for name, value in [("num_labels", num_labels), ("dead_fraction", dead_fraction), ("probe_size", probe_size),
                            ("figures_every_n_epochs", figures_every_n_epochs)]:
            check_non_negative(name, value)
        self.stages, self.label_index, self.num_labels = tuple(stages), label_index, int(num_labels)
        self.dead_fraction, self.probe_size = float(dead_fraction), int(probe_size)
        self.figures_every_n_epochs = int(figures_every_n_epochs)
        self.capture: RoutingCapture | None = None
        self.stats: dict[str, dict[str, RoutingStats]] = {}
        self.label_names: list[str] | None = None
        self.probe: Tensor | None = None
        self.probe_top1: dict[str, Tensor] = {}
        self.stability: dict[str, list[float]] = {}
        self.stability_stats: dict[str, ChangedFraction] = {}
        self.warned_no_layer = False

    # ------------------------------------------------------------------ set up
    def _num_labels(self, trainer: Trainer, pl_module: LightningModule) -> int:
        if self.label_index is None:
            return 0
        if self.num_labels:
            return self.num_labels
        data = getattr(trainer, "datamodule", None)
        for source in (data, pl_module):
            for name in ("num_labels", "num_classes"):
                if isinstance(getattr(source, name, None), int):
                    return getattr(source, name)
        return 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.capture is not None:
            return
        capture = RoutingCapture(pl_module)
        if not capture.layers:
            self._warn_no_layer(pl_module)
            return
        self.capture = capture
        labels = self._num_labels(trainer, pl_module)
        self.label_names = getattr(getattr(trainer, "datamodule", None), "label_names", None)
        self.stats = {
            stage_name: {name: RoutingStats(experts, labels, self.dead_fraction)
                         for name, (_, experts) in self.capture.layers.items()}
            for stage_name in self.stages
        }
        self.stability_stats = {name: ChangedFraction() for name in self.capture.layers}

    def _warn_no_layer(self, pl_module: LightningModule) -> None:
        """Say once that ``pl_module`` has nothing to monitor; the hooks then find no capture and do nothing."""
        if not self.warned_no_layer:
            self.warned_no_layer = True
            rank_zero_warn(f"RoutingMonitor: {type(pl_module).__name__} has no MoE layer (no gmnn MoELayer, Hugging "
                           "Face MoE block or gmnn gate): nothing is monitored", category=UserWarning)

    def _to_device(self, pl_module: LightningModule) -> None:
        metrics = [*self.stability_stats.values(), *(m for stage in self.stats.values() for m in stage.values())]
        for metric in metrics:  # setup runs before the strategy moves the model
            metric.to(pl_module.device)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_device(pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_device(pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._to_device(pl_module)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.capture is not None:
            self.capture.remove()
            self.capture = None

    # --------------------------------------------------------------- per batch
    def _labels(self, batch: Any) -> Tensor | None:
        if self.label_index is None or not isinstance(batch, (list, tuple)) or len(batch) < 2:
            return None
        return batch[self.label_index]

    def _update(self, stage: str, batch: Any) -> None:
        if self.capture is None or stage not in self.stats:
            return
        labels = self._labels(batch)
        for name, routing in self.capture.records.items():
            tokens = routing.probs.shape[0]
            fits = labels is not None and labels.numel() == tokens
            self.stats[stage][name].update(routing, labels.reshape(-1) if fits else None)
        self.capture.clear()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self.capture is None or self.probe is not None or self.probe_size == 0:
            return
        if isinstance(batch, (list, tuple)) and isinstance(batch[0], Tensor):
            self.probe = batch[0][: self.probe_size].detach().clone()
            self.probe_top1 = self._probe_routing(pl_module)
            self.stability = {name: [] for name in self.probe_top1}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._update("train", batch)
        if _last_training_batch(trainer, batch_idx):  # the epoch's end, in lockstep on every rank
            self._log_stability(trainer, pl_module)
            self._finish(trainer, pl_module, "train")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("val", batch)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update("test", batch)

    # --------------------------------------------------------------- per epoch
    @torch.no_grad()
    def _probe_routing(self, pl_module: LightningModule) -> dict[str, Tensor]:
        was_training = pl_module.training
        pl_module.eval()
        self.capture.clear()
        pl_module(self.probe.to(pl_module.device))
        top1 = {name: routing.top1.clone() for name, routing in self.capture.records.items()}
        self.capture.clear()
        pl_module.train(was_training)
        return top1

    def _log_stability(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.probe is None:
            return
        now = self._probe_routing(pl_module)
        for name, top1 in now.items():
            metric = self.stability_stats[name]
            if name in self.probe_top1:
                metric.update(top1 != self.probe_top1[name])
            value = metric.compute()  # synced over ranks: every rank runs this hook in the same order
            metric.reset()
            self.stability.setdefault(name, []).append(float(value))
            pl_module.log(f"train/routing/{name}/stability", value, on_step=False, on_epoch=True, batch_size=1)
        self.probe_top1 = now

    def _finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in self.stats or self.capture is None:
            return
        computed = {}
        for name in self.capture.layers:
            metric = self.stats[stage][name]
            values = metric.compute()  # the collective: every rank reaches this hook in the same order
            computed[name] = metric.matrices()
            metric.reset()
            pl_module.log_dict({f"{stage}/routing/{name}/{key}": value for key, value in values.items()
                                if key in SERIES}, on_step=False, on_epoch=True, batch_size=1)
        due = self.figures_every_n_epochs > 0 and (trainer.current_epoch + 1) % self.figures_every_n_epochs == 0
        writer = tensorboard_writer(trainer)
        if trainer.is_global_zero and writer is not None and (stage == "test" or due and stage == "val"):
            for name, matrices in computed.items():
                history = self.stability.get(name)
                fig = routing_figure(matrices, self.label_names, f"{stage} {name}", history)
                writer.add_figure(f"{stage}/routing/{name}", fig, global_step=trainer.global_step, close=True)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            for metric in self.stats["val"].values() if "val" in self.stats else ():
                metric.reset()
            return
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, pl_module, "test")


def _last_training_batch(trainer: Trainer, batch_idx: int) -> bool:
    """Whether this is the epoch's last training batch (or the run's last step): the same answer on every rank."""
    last_step = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step
    return bool(trainer.is_last_batch) or batch_idx + 1 >= trainer.num_training_batches or last_step
