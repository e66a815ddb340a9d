"""The decision-region figure of a model on 2-D inputs: the gate's choice, each expert's class, the model's class."""

from __future__ import annotations

import torch
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from gmnn.callbacks.drawing import KeptPlot, new_figure
from gmnn.pl import LightningModule


def _grid(points: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    low, high = points.min(0).values, points.max(0).values
    margin = 0.05 * (high - low).clamp_min(1e-3)
    xs = torch.linspace(float(low[0] - margin[0]), float(high[0] + margin[0]), size)
    ys = torch.linspace(float(low[1] - margin[1]), float(high[1] + margin[1]), size)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return gx, gy, torch.stack([gx.flatten(), gy.flatten()], 1)


class DecisionRegionsPlot(KeptPlot):
    """Decision regions over a grid around fixed data points, built once and redrawn with each model's regions.

    One panel per region map (the gate's chosen expert, each expert's class, the model's class), each a mesh
    over the grid under the data points coloured by label. :meth:`update` sets new region maps, and
    :meth:`~gmnn.callbacks.drawing.KeptPlot.pixels` redraws only the meshes and the points above them.

    Args:
        num_experts: Experts of the model (panels: gate, one per expert, model).
        num_classes: Classes of the model (the colour range of the class panels and the points).
        points: ``[N, 2]`` data points shown on every panel.
        labels: ``[N]`` their classes.
        size: Grid points per axis.
        pyplot: Make the figure through pyplot (``False``: a plain ``Figure`` no registry keeps alive).
    """

    def __init__(self, num_experts: int, num_classes: int, points: Tensor, labels: Tensor, size: int,
                 pyplot: bool = True) -> None:
        self.points, self.labels = points.float().cpu(), labels.cpu()
        self.key = (num_experts, num_classes, size)
        gx, gy, self.grid = _grid(self.points, size)
        gate_colours = "tab10" if num_experts <= 10 else "tab20"  # expert i gets colour i
        panels = [("gate: chosen expert", 10 if num_experts <= 10 else 20, gate_colours)]
        panels += [(f"expert {e}: class", num_classes, "coolwarm") for e in range(num_experts)]
        panels.append(("model: class", num_classes, "coolwarm"))
        columns = min(4, len(panels))
        rows = -(-len(panels) // columns)
        self.fig: Figure = new_figure((3 * columns, 3 * rows), pyplot=pyplot)
        axes = self.fig.subplots(rows, columns, squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.axis("off")
        empty = torch.zeros(size, size).numpy()
        point_colours = colormaps["coolwarm"](Normalize(0, max(num_classes - 1, 1))(range(num_classes)))
        by_class = [(c, self.points[self.labels == c].numpy()) for c in range(num_classes)]
        self.panels: list[tuple[Axes, Artist, list[Artist]]] = []
        for ax, (title, count, cmap) in zip(axes.flat, panels):
            mesh = ax.pcolormesh(gx.numpy(), gy.numpy(), empty, cmap=cmap, vmin=0, vmax=max(count - 1, 1), alpha=0.45,
                                 shading="auto")
            # the points of each class as one line of markers: Agg draws a marker once and stamps it at every
            # point, several times faster than a scatter collection, which draws each point's path
            dots = [ax.plot(xy[:, 0], xy[:, 1], linestyle="none", marker="o", markersize=2, markeredgewidth=0,
                            color=point_colours[c])[0] for c, xy in by_class if len(xy)]
            ax.set(title=title, xticks=[], yticks=[])
            self.panels.append((ax, mesh, dots))
        self.fig.tight_layout()

    def shows(self, num_experts: int, num_classes: int, points: Tensor, labels: Tensor, size: int) -> bool:
        """Whether this plot is the one for a model of this shape on these points (else build another)."""
        return (self.key == (num_experts, num_classes, size) and torch.equal(self.points, points.float().cpu())
                and torch.equal(self.labels, labels.cpu()))

    @torch.no_grad()
    def update(self, model: LightningModule) -> Figure:
        """Show ``model``'s regions over the grid (``model`` maps ``[N, 2]`` to a
        :class:`~gmnn.nn.mixture.output.MoEOutput` and owns ``experts``); returns the figure."""
        grid = self.grid.to(model.device, model.dtype)  # the module's precision (e.g. 64-true, bf16-true)
        out = model(grid)
        expert_logits = model.experts(grid)[0]
        maps = [out.chosen_expert, *(expert_logits[:, e].argmax(-1) for e in range(model.num_experts)),
                out.log_probs.argmax(-1)]
        size = self.key[2]
        for (_, mesh, _), values in zip(self.panels, maps):
            mesh.set_array(values.view(size, size).cpu().numpy())
        return self.fig

    def values_on_top(self) -> list[tuple[Axes, list[Artist]]]:
        """Each panel's mesh, the points above it, then its frame."""
        return [(ax, [mesh, *dots, *ax.spines.values()]) for ax, mesh, dots in self.panels]


def decision_regions_figure(model: LightningModule, points: Tensor, labels: Tensor, size: int = 80,
                            pyplot: bool = True) -> Figure:
    """Which expert the gate picks, each expert's class and the model's class over a grid of a 2-D input.

    ``model`` maps ``[N, 2]`` to a :class:`~gmnn.nn.mixture.output.MoEOutput` and owns ``experts``;
    ``pyplot=False`` makes a plain ``Figure`` that no backend or registry sees. A new figure each call;
    :class:`DecisionRegionsPlot` keeps one and redraws it.
    """
    plot = DecisionRegionsPlot(model.num_experts, model.num_classes, points, labels, size, pyplot=pyplot)
    return plot.update(model)
