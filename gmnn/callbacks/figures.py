"""TensorBoard figures of the task decomposition: allocation, usage, gate histograms, 2-D regions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

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


def new_figure(size: tuple[float, float], dpi: float = 100, pyplot: bool = True) -> Figure:
    """A figure of ``size`` inches: pyplot's (shown by ``plt.show()``, kept until ``plt.close``), or with
    ``pyplot=False`` a plain ``Figure`` drawn by Agg, freed with its last reference and unseen by the backend."""
    if pyplot:
        return plt.figure(figsize=size, dpi=dpi)
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


class DecompositionPlot:
    """The decomposition figure of one shape (experts x classes), built once and redrawn with new values.

    Left: heatmap of each expert's (rows) mean gate probability on each class (columns), with
    each expert's accuracy on the samples routed to it in its label. Right: bars of each expert's
    mean gate probability and of the fraction of samples routed to it (argmax of the gate).
    Building and drawing the figure is slow (nearly all of it text), so :class:`DecompositionFigures`
    keeps one per stage, updates its values and redraws only them over the rest, drawn once
    (:meth:`pixels`).

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
        self._background: Any = None  # the figure without its values, drawn by the first pixels()

    def update(self, allocation: Tensor, accuracy: Tensor, usage: Tensor, routed_fraction: Tensor) -> Figure:
        """Show these values (shapes ``[E, C]``, ``[E]``, ``[E]``, ``[E]``); returns the figure."""
        self.image.set_data(allocation.numpy())
        self.heat.set_yticklabels([f"expert {e} ({a:.2f})" for e, a in enumerate(accuracy.tolist())], fontsize="small")
        for bars, heights in ((self.usage, usage), (self.routed, routed_fraction)):
            for bar, height in zip(bars, heights.tolist()):
                bar.set_height(height)
        return self.fig

    def pixels(self) -> np.ndarray:
        """The figure as ``[H, W, 3]`` uint8, what ``fig.canvas.draw()`` would show: the values drawn over
        the rest of the figure, which is drawn once (matplotlib's blitting)."""
        canvas = self.fig.canvas
        # drawn over the background in a full draw's order: values, then spines and legend above them
        on_top = [(self.heat, [self.image, *self.heat.get_yticklabels(), *self.heat.spines.values()]),
                  (self.bars, [*self.usage, *self.routed, *self.bars.spines.values(), self.bars.get_legend()])]
        if self._background is None:
            for _, artists in on_top:
                for artist in artists:
                    artist.set_visible(False)
            canvas.draw()
            self._background = canvas.copy_from_bbox(self.fig.bbox)
            for _, artists in on_top:
                for artist in artists:
                    artist.set_visible(True)
        canvas.restore_region(self._background)
        for axes, artists in on_top:
            for artist in artists:
                axes.draw_artist(artist)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


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


def _grid(points: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    low, high = points.min(0).values, points.max(0).values
    margin = 0.05 * (high - low).clamp_min(1e-3)
    xs = torch.linspace(float(low[0] - margin[0]), float(high[0] + margin[0]), size)
    ys = torch.linspace(float(low[1] - margin[1]), float(high[1] + margin[1]), size)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return gx, gy, torch.stack([gx.flatten(), gy.flatten()], 1)


@torch.no_grad()
def decision_regions_figure(model: LightningModule, points: Tensor, labels: Tensor, size: int = 80,
                            pyplot: bool = True) -> Figure:
    """Which expert the gate picks, each expert's class and the model's class over a grid of a 2-D input.

    ``model`` maps ``[N, 2]`` to a :class:`~gmnn.nn.mixture.output.MoEOutput` and owns ``experts``;
    ``pyplot=False`` makes a plain ``Figure`` that no backend or registry sees (what the callback draws).
    """
    gx, gy, grid = _grid(points.float().cpu(), size)
    grid = grid.to(model.device, model.dtype)  # the module's precision (e.g. 64-true, bf16-true)
    out = model(grid)
    expert_logits = model.experts(grid)[0]
    gate_colours = "tab10" if model.num_experts <= 10 else "tab20"  # expert i gets colour i
    panels = [("gate: chosen expert", out.chosen_expert, 10 if model.num_experts <= 10 else 20, gate_colours)]
    panels += [(f"expert {e}: class", expert_logits[:, e].argmax(-1), model.num_classes, "coolwarm") for e in range(model.num_experts)]
    panels.append(("model: class", out.log_probs.argmax(-1), model.num_classes, "coolwarm"))
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig = new_figure((3 * columns, 3 * rows), pyplot=pyplot)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    x, y = points.cpu().numpy(), labels.cpu().numpy()
    for ax, (title, values, count, cmap) in zip(axes.flat, panels):
        ax.pcolormesh(gx.numpy(), gy.numpy(), values.view(size, size).cpu().numpy(), cmap=cmap, vmin=0, vmax=max(count - 1, 1), alpha=0.45, shading="auto")
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=4, edgecolors="none", vmin=0, vmax=max(model.num_classes - 1, 1))
        ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    return fig


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
        return self._figures(trainer, pl_module, stage, plot=None)

    def _figures(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, plot: DecompositionPlot | None
    ) -> dict[str, Figure]:
        result = {key: value.cpu() for key, value in pl_module.allocation[stage].compute().items()}
        for key in ("expert_accuracy", "routed", "usage"):  # torchmetrics squeezes one-element results (E = 1)
            result[key] = result[key].reshape(-1)
        routed_fraction = result["routed"] / result["class_counts"].sum().clamp_min(1)
        values = (result["allocation"], result["expert_accuracy"], result["usage"], routed_fraction.float())
        figures = {f"{stage}/decomposition": decomposition_figure(*values) if plot is None else plot.update(*values)}
        if tuple(getattr(pl_module, "input_shape", ())) == (2,):
            loader = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
            loader = loader[0] if isinstance(loader, (list, tuple)) else loader
            data = _first_points(loader, self.max_points) if loader is not None else None
            if data is not None:
                was_training = pl_module.training
                pl_module.eval()
                figures[f"{stage}/decision_regions"] = decision_regions_figure(pl_module, *data, size=self.grid_size, pyplot=False)
                pl_module.train(was_training)
        return figures

    def _plot(self, stage: str, pl_module: LightningModule) -> DecompositionPlot:
        """This stage's kept decomposition plot (a new one when the model's shape changed)."""
        shape = (pl_module.allocation[stage].num_experts, pl_module.allocation[stage].num_classes)
        plot = self._plots.get(stage)
        if plot is None or plot.shape != shape:
            plot = self._plots[stage] = DecompositionPlot(*shape, pyplot=False)
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
        plot = self._plot(stage, pl_module)
        step = trainer.global_step
        for tag, fig in self._figures(trainer, pl_module, stage, plot).items():
            # the kept plot redraws only its values (DecompositionPlot.pixels); any other figure is drawn and closed
            pixels = plot.pixels() if fig is plot.fig else figure_pixels(fig)
            if writer is not None:
                writer.add_image(tag, pixels, global_step=step, dataformats="HWC")
            elif images is not None:
                images.log_image(key=tag, images=[pixels], step=step)
            elif log_dir is not None:
                path = Path(log_dir) / FIGURES_DIR / f"{tag.replace('/', '_')}_step{step}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                matplotlib.image.imsave(path, pixels)


FIGURES_DIR = "figures"


def figure_pixels(fig: Figure) -> np.ndarray:
    """``fig`` as an ``[H, W, 3]`` uint8 array (what image-taking loggers accept), the figure closed."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels

