"""TensorBoard figures of the task decomposition: allocation, usage, gate histograms, 2-D regions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning import Callback, LightningModule, Trainer  # noqa: E402
from pytorch_lightning.loggers import Logger, TensorBoardLogger  # noqa: E402
from torch import Tensor  # noqa: E402

from gmnn.run_folder import run_folder  # noqa: E402
from gmnn.validation import check_positive_int  # noqa: E402


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


def decomposition_figure(allocation: Tensor, accuracy: Tensor, usage: Tensor, routed_fraction: Tensor) -> plt.Figure:
    """Left: heatmap of each expert's (rows) mean gate probability on each class (columns), with
    each expert's accuracy on the samples routed to it. Right: bars of each expert's mean gate
    probability and of the fraction of samples routed to it (argmax of the gate)."""
    num_experts, num_classes = allocation.shape
    experts = torch.arange(num_experts).numpy()
    fig = plt.figure(figsize=(3.5 + 0.35 * num_classes + 0.35 * num_experts, 1.4 + 0.3 * num_experts), dpi=80)
    heat, bars = fig.subplots(1, 2, width_ratios=[num_classes + 2, num_experts + 2])
    fig.subplots_adjust(left=0.16, right=0.98, bottom=0.2, top=0.88, wspace=0.35)
    heat.imshow(allocation.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    heat.set(title="mean gate prob. per class", xlabel="class", xticks=range(num_classes), yticks=experts)
    heat.set_yticklabels([f"expert {e} ({a:.2f})" for e, a in enumerate(accuracy.tolist())], fontsize="small")
    bars.bar(experts - 0.2, usage.numpy(), width=0.4, label="mean gate prob.")
    bars.bar(experts + 0.2, routed_fraction.numpy(), width=0.4, label="routed (argmax)")
    bars.set(title="usage", xlabel="expert", xticks=experts, ylim=(0, 1.3), yticks=[0, 0.5, 1])
    bars.legend(fontsize="x-small", loc="upper center", ncols=2, handlelength=1)
    return fig


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
def decision_regions_figure(model: LightningModule, points: Tensor, labels: Tensor, size: int = 80) -> plt.Figure:
    """Which expert the gate picks, each expert's class and the model's class over a grid of a 2-D input.

    ``model`` maps ``[N, 2]`` to a :class:`~gmnn.nn.output.MoEOutput` and owns ``experts``.
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
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
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

    def figures(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> dict[str, plt.Figure]:
        """The figures of ``stage`` (``"val"`` or ``"test"``) as ``{tag: figure}``."""
        result = {key: value.cpu() for key, value in pl_module.allocation[stage].compute().items()}
        for key in ("expert_accuracy", "routed", "usage"):  # torchmetrics squeezes one-element results (E = 1)
            result[key] = result[key].reshape(-1)
        routed_fraction = result["routed"] / result["class_counts"].sum().clamp_min(1)
        figures = {
            f"{stage}/decomposition": decomposition_figure(
                result["allocation"], result["expert_accuracy"], result["usage"], routed_fraction.float()
            )
        }
        if tuple(getattr(pl_module, "input_shape", ())) == (2,):
            loader = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
            loader = loader[0] if isinstance(loader, (list, tuple)) else loader
            data = _first_points(loader, self.max_points) if loader is not None else None
            if data is not None:
                was_training = pl_module.training
                pl_module.eval()
                figures[f"{stage}/decision_regions"] = decision_regions_figure(pl_module, *data, size=self.grid_size)
                pl_module.train(was_training)
        return figures

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
        for tag, fig in self.figures(trainer, pl_module, stage).items():
            if writer is not None:
                writer.add_figure(tag, fig, global_step=trainer.global_step, close=True)
            elif images is not None:
                images.log_image(key=tag, images=[figure_pixels(fig)], step=trainer.global_step)
            elif log_dir is not None:
                save_png(fig, Path(log_dir) / FIGURES_DIR / f"{tag.replace('/', '_')}_step{trainer.global_step}.png")


FIGURES_DIR = "figures"


def figure_pixels(fig: plt.Figure) -> np.ndarray:
    """``fig`` as an ``[H, W, 3]`` uint8 array (what image-taking loggers accept), the figure closed."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def save_png(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` (for loggers that take no images, e.g. ``CSVLogger``) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
