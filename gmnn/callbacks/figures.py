"""TensorBoard figures of the task decomposition: allocation, usage, gate histograms, 2-D regions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

# decision_regions_figure and figure_pixels are importable from here too
from gmnn.callbacks.decision_regions import DecisionRegionsPlot, decision_regions_figure as decision_regions_figure
from gmnn.callbacks.drawing import KeptPlot, figure_pixels as figure_pixels, new_figure
from gmnn.callbacks.run_folder import run_folder
from gmnn.pl import Callback, LightningModule, Logger, TensorBoardLogger, Trainer
from gmnn.validation import check_positive_int


def tensorboard_writer(trainer: Trainer) -> Any | None:
    """The ``SummaryWriter`` of the trainer's first TensorBoard logger, else ``None``."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def image_logger(trainer: Trainer) -> Logger | None:
    """The first logger that takes images through ``log_image(key, images, step)`` (W&B's, ...), else ``None``."""
    for logger in trainer.loggers:
        if callable(getattr(logger, "log_image", None)):
            return logger
    return None


class DecompositionPlot(KeptPlot):
    """The decomposition figure of one shape (experts x classes), built once and redrawn with new values.

    Left: heatmap of each expert's (rows) mean gate probability on each class (columns), with
    each expert's accuracy on the samples routed to it in its label. Right: bars of each expert's
    mean gate probability and of the fraction of samples routed to it (argmax of the gate).
    Building and drawing the figure is slow (nearly all of it text), so :class:`DecompositionFigures`
    keeps one per stage, updates its values and redraws only them over the rest, drawn once
    (:meth:`~gmnn.callbacks.drawing.KeptPlot.pixels`).

    Args:
        num_experts: Rows of the heatmap, bars of the usage plot.
        num_classes: Columns of the heatmap.
        pyplot: Make the figure through pyplot (``False``: a plain ``Figure`` no registry keeps alive).
    """

    def __init__(self, num_experts: int, num_classes: int, pyplot: bool = True) -> None:
        experts = torch.arange(num_experts).numpy()
        size = (3.5 + 0.35 * num_classes + 0.35 * num_experts, 1.4 + 0.3 * num_experts)
        fig = new_figure(size, dpi=80, pyplot=pyplot)
        heat, bars = fig.subplots(1, 2, width_ratios=[num_classes + 2, num_experts + 2])
        fig.subplots_adjust(left=0.16, right=0.98, bottom=0.2, top=0.88, wspace=0.35)
        self.image = heat.imshow(np.zeros((num_experts, num_classes)), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        heat.set(title="mean gate prob. per class", xlabel="class", xticks=range(num_classes), yticks=experts)
        self.usage = bars.bar(experts - 0.2, np.zeros(num_experts), width=0.4, label="mean gate prob.")
        self.routed = bars.bar(experts + 0.2, np.zeros(num_experts), width=0.4, label="routed (argmax)")
        bars.set(title="usage", xlabel="expert", xticks=experts, ylim=(0, 1.3), yticks=[0, 0.5, 1])
        bars.legend(fontsize="x-small", loc="upper center", ncols=2, handlelength=1)
        self.fig, self.heat, self.bars, self.shape = fig, heat, bars, (num_experts, num_classes)

    def update(self, allocation: Tensor, accuracy: Tensor, usage: Tensor, routed_fraction: Tensor) -> Figure:
        """Show these values (shapes ``[E, C]``, ``[E]``, ``[E]``, ``[E]``); returns the figure."""
        self.image.set_data(allocation.numpy())
        self.heat.set_yticklabels([f"expert {e} ({a:.2f})" for e, a in enumerate(accuracy.tolist())], fontsize="small")
        for bars, heights in ((self.usage, usage), (self.routed, routed_fraction)):
            for bar, height in zip(bars, heights.tolist()):
                bar.set_height(height)
        return self.fig

    def values_on_top(self) -> list[tuple[Axes, list[Artist]]]:
        """The heatmap, its labels and the bars, then the spines and legend above them (a full draw's order)."""
        return [(self.heat, [self.image, *self.heat.get_yticklabels(), *self.heat.spines.values()]),
                (self.bars, [*self.usage, *self.routed, *self.bars.spines.values(), self.bars.get_legend()])]


def decomposition_figure(allocation: Tensor, accuracy: Tensor, usage: Tensor, routed_fraction: Tensor) -> Figure:
    """A new :class:`DecompositionPlot` figure showing these values."""
    return DecompositionPlot(*allocation.shape).update(allocation, accuracy, usage, routed_fraction)


def write_histograms(writer: Any, tag: str, histogram: Tensor, step: int) -> None:
    """Write each expert's gate-probability histogram ``[E, bins]`` (bins of [0, 1]) as a TensorBoard histogram."""
    bins = histogram.shape[1]
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    for expert, counts in enumerate(histogram.double()):
        filled = counts.nonzero().flatten()
        if len(filled) == 0:
            continue
        writer.add_histogram_raw(
            f"{tag}/expert_{expert}", min=float(edges[filled[0]]), max=float(edges[filled[-1] + 1]),
            num=int(counts.sum()), sum=float(counts @ centres), sum_squares=float(counts @ centres**2),
            bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(), global_step=step,
        )


def _first_points(loader: Any, limit: int) -> tuple[Tensor, Tensor] | None:
    xs, ys, seen = [], [], 0
    for batch in loader:
        xs.append(batch[0])
        ys.append(batch[1])
        seen += len(batch[0])
        if seen >= limit:
            break
    return (torch.cat(xs)[:limit], torch.cat(ys)[:limit]) if xs else None


class DecompositionFigures(Callback):
    """Writes TensorBoard figures of how the gate splits the task (on by default in ``gmnn``).

    At the end of every validation epoch (sanity check excluded) and of
    testing, from the module's ``ExpertAllocation`` metric: one figure
    (``{stage}/decomposition``) with the expert x class allocation heatmap
    (each expert's accuracy on its samples in its label) and per-expert usage
    bars, and TensorBoard histograms of each expert's gate probability
    (``{stage}/gate_probs/expert_i``). For 2-D inputs it also draws the
    decision regions of the gate, of every expert and of the model over a grid
    with the data points (``{stage}/decision_regions``). Figures are drawn on
    global rank zero only; with a logger that is not TensorBoard's (e.g. ``CSVLogger``) they
    are written as PNG files to ``<run folder>/figures/<stage>_<name>_step<N>.png``, and
    without a logger they are skipped.
    Call :meth:`figures` to get the matplotlib figures directly.

    Args:
        every_n_epochs: Draw every n-th validation epoch (0: only after testing).
        grid_size: Grid points per axis of the 2-D decision-region plot.
        max_points: Data points scattered on the 2-D plot.
    """

    def __init__(self, every_n_epochs: int = 1, grid_size: int = 80, max_points: int = 1000) -> None:
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be an integer >= 0, got {every_n_epochs!r}")
        check_positive_int("grid_size", grid_size)
        check_positive_int("max_points", max_points)
        self.every_n_epochs = every_n_epochs
        self.grid_size = grid_size
        self.max_points = max_points
        self._plots: dict[str, DecompositionPlot] = {}  # per stage, redrawn every epoch
        self._regions: dict[str, DecisionRegionsPlot] = {}  # per stage, redrawn while its data points stay the same

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module, "val")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(pl_module, "test")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        due = self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not trainer.sanity_checking and due:
            self._write(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    # ---------------------------------------------------------------- drawing
    def _start(self, pl_module: LightningModule, stage: str) -> None:
        allocation = getattr(pl_module, "allocation", None)
        if allocation is not None and stage in allocation:
            allocation[stage].reset()

    def figures(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> dict[str, Figure]:
        """The figures of ``stage`` (``"val"`` or ``"test"``) as ``{tag: figure}`` (new figures, yours to close)."""
        return {tag: plot.fig for tag, plot in self._drawn(trainer, pl_module, stage, kept=False).items()}

    def _drawn(self, trainer: Trainer, pl_module: LightningModule, stage: str, kept: bool) -> dict[str, KeptPlot]:
        """``{tag: plot}`` showing ``stage``'s values: this stage's kept plots (``kept``) or new ones."""
        result = {key: value.cpu() for key, value in pl_module.allocation[stage].compute().items()}
        for key in ("expert_accuracy", "routed", "usage"):  # torchmetrics squeezes one-element results (E = 1)
            result[key] = result[key].reshape(-1)
        routed_fraction = result["routed"] / result["class_counts"].sum().clamp_min(1)
        values = (result["allocation"], result["expert_accuracy"], result["usage"], routed_fraction.float())
        decomposition = self._plot(stage, pl_module) if kept else DecompositionPlot(*values[0].shape)
        decomposition.update(*values)
        plots: dict[str, KeptPlot] = {f"{stage}/decomposition": decomposition}
        if tuple(getattr(pl_module, "input_shape", ())) == (2,):
            loader = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
            loader = loader[0] if isinstance(loader, (list, tuple)) else loader
            data = _first_points(loader, self.max_points) if loader is not None else None
            if data is not None:
                regions = self._regions_plot(stage, pl_module, *data, kept)
                was_training = pl_module.training
                pl_module.eval()
                regions.update(pl_module)
                pl_module.train(was_training)
                plots[f"{stage}/decision_regions"] = regions
        return plots

    def _plot(self, stage: str, pl_module: LightningModule) -> DecompositionPlot:
        """This stage's kept decomposition plot (a new one when the model's shape changed)."""
        shape = (pl_module.allocation[stage].num_experts, pl_module.allocation[stage].num_classes)
        plot = self._plots.get(stage)
        if plot is None or plot.shape != shape:
            plot = self._plots[stage] = DecompositionPlot(*shape, pyplot=False)
        return plot

    def _regions_plot(self, stage: str, pl_module: LightningModule, points: Tensor, labels: Tensor,
                      kept: bool) -> DecisionRegionsPlot:
        """With ``kept``, this stage's kept regions plot (a new one when the model's shape or the points changed);
        else a new plot."""
        shape = (pl_module.num_experts, pl_module.num_classes)
        plot = self._regions.get(stage) if kept else None
        if plot is None or not plot.shows(*shape, points, labels, self.grid_size):
            plot = DecisionRegionsPlot(*shape, points, labels, self.grid_size, pyplot=False)
            if kept:
                self._regions[stage] = plot
        return plot

    def _write(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage not in getattr(pl_module, "allocation", {}) or not trainer.loggers:
            return
        result = pl_module.allocation[stage].compute()  # collective under DDP: every rank takes part
        log_dir = run_folder(trainer)  # a broadcast under DDP: asked on every rank
        if not trainer.is_global_zero:
            return
        writer, images = tensorboard_writer(trainer), image_logger(trainer)
        if writer is not None:
            write_histograms(writer, f"{stage}/gate_probs", result["histogram"].cpu(), trainer.global_step)
        step = trainer.global_step
        for tag, plot in self._drawn(trainer, pl_module, stage, kept=True).items():
            pixels = plot.pixels()  # the kept plots redraw only their values (KeptPlot.pixels)
            if writer is not None:
                writer.add_image(tag, pixels, global_step=step, dataformats="HWC")
            elif images is not None:
                images.log_image(key=tag, images=[pixels], step=step)
            elif log_dir is not None:
                path = Path(log_dir) / FIGURES_DIR / f"{tag.replace('/', '_')}_step{step}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                matplotlib.image.imsave(path, pixels)


FIGURES_DIR = "figures"

