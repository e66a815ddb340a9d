"""Time of the figures ``DecompositionFigures`` writes each epoch: built and drawn whole against kept and redrawn.

Interleaved, one model after another (the regions change each time), medians; one intra-op thread::

    python scripts/bench_figures.py --repeat 12
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from gmnn.callbacks.decision_regions import DecisionRegionsPlot, decision_regions_figure
from gmnn.callbacks.drawing import figure_pixels
from gmnn.callbacks.figures import DecompositionPlot, decomposition_figure
from gmnn.models import DenseMoE


def _new_regions(model: DenseMoE, x: torch.Tensor, y: torch.Tensor, grid: int) -> None:
    figure_pixels(decision_regions_figure(model, x, y, size=grid, pyplot=False))


def _kept_regions(plot: DecisionRegionsPlot, model: DenseMoE) -> None:
    plot.update(model)
    plot.pixels()


def _new_decomposition(values: tuple[torch.Tensor, ...]) -> None:
    figure_pixels(decomposition_figure(*values))


def _kept_decomposition(plot: DecompositionPlot, values: tuple[torch.Tensor, ...]) -> None:
    plot.update(*values)
    plot.pixels()


def measure(repeat: int, experts: int, classes: int, grid: int, points: int) -> dict[str, dict[str, float]]:
    """Median seconds of a figure built and drawn whole (``new``) and of the kept one redrawn (``kept``)."""
    torch.manual_seed(0)
    x = torch.randn(points, 2)
    y = torch.randint(0, classes, (points,))
    models = [DenseMoE(input_shape=[2], num_classes=classes, num_experts=experts).eval() for _ in range(3)]
    regions = DecisionRegionsPlot(experts, classes, x, y, grid, pyplot=False)
    decomposition = DecompositionPlot(experts, classes, pyplot=False)
    times: dict[str, dict[str, list[float]]] = {"decision regions": {"new": [], "kept": []},
                                                "decomposition": {"new": [], "kept": []}}
    for index in range(repeat + 1):  # the first round builds the kept figures' backgrounds: left out
        model = models[index % len(models)]
        values = (torch.rand(experts, classes), torch.rand(experts), torch.rand(experts), torch.rand(experts))

        rounds = {
            "decision regions": (partial(_new_regions, model, x, y, grid), partial(_kept_regions, regions, model)),
            "decomposition": (partial(_new_decomposition, values), partial(_kept_decomposition, decomposition, values)),
        }
        for name, (new, kept) in rounds.items():
            for kind, draw in (("new", new), ("kept", kept)):
                start = time.perf_counter()
                draw()
                if index:
                    times[name][kind].append(time.perf_counter() - start)
    return {name: {kind: statistics.median(values) for kind, values in kinds.items()} for name, kinds in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=12)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--grid", type=int, default=80, help="grid points per axis (DecompositionFigures.grid_size)")
    parser.add_argument("--points", type=int, default=1000, help="data points shown (DecompositionFigures.max_points)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    torch.set_num_threads(1)
    result = measure(args.repeat, args.experts, args.classes, args.grid, args.points)
    print(f"E={args.experts} C={args.classes} grid={args.grid} points={args.points}, medians of {args.repeat}, 1 thread")
    print("| figure | built and drawn whole, s | kept, redrawn, s | ratio |\n|---|---|---|---|")
    for name, row in result.items():
        print(f"| {name} | {row['new']:.4f} | {row['kept']:.4f} | {row['new'] / row['kept']:.2f}x |")


if __name__ == "__main__":
    main()
