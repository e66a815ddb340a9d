"""A routing report of a trained model: every MoE layer's numbers over a dataloader, as rows, a CSV and figures."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gmnn.analysis.capture import RoutingCapture
from gmnn.analysis.plots import routing_figure
from gmnn.metrics.routing import RoutingStats
from gmnn.validation import check_positive_int


@dataclass
class LayerReport:
    """One row of :func:`routing_report`: a layer's numbers over the whole dataloader (bits for entropies)."""

    layer: str
    num_experts: int
    tokens: int
    usage: float
    usage_max: float
    imbalance: float
    dead_experts: int
    dropped: float
    router_z: float
    mutual_information: float = float("nan")
    mi_ceiling: float = float("nan")
    label_entropy: float = float("nan")


def default_input(batch: Any) -> Any:
    """The model input of a batch: its first entry, or ``input_ids`` of a dict (Hugging Face)."""
    return batch["input_ids"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch


def default_label(batch: Any) -> Tensor | None:
    """The per-token label of a batch: the last entry of a tuple of two or more (the source of
    :class:`gmnn.data.MixedSourceTextDataModule`, an image model's class); ``None`` otherwise."""
    return batch[-1] if isinstance(batch, (list, tuple)) and len(batch) >= 2 else None


@torch.no_grad()
def routing_report(
    model: nn.Module,
    dataloader: Iterable[Any],
    label_fn: Callable[[Any], Tensor | None] | None = default_label,
    input_fn: Callable[[Any], Any] = default_input,
    num_labels: int | None = None,
    dead_fraction: float = 0.1,
    max_batches: int | None = None,
) -> tuple[list[LayerReport], dict[str, dict[str, Tensor]]]:
    """Run ``model`` (eval mode) over ``dataloader`` and measure every MoE layer's routing.

    Args:
        model: A gmnn model (``MoETransformerLM``, an image variant) or a Hugging Face MoE model.
        dataloader: Batches; ``input_fn(batch)`` is passed to ``model``.
        label_fn: Per-token labels of a batch (e.g. the source), or ``None`` for no label metrics.
        input_fn: The model input of a batch.
        num_labels: Label values L (default: the largest label of the first batch + 1).
        dead_fraction: See :class:`RoutingStats`.
        max_batches: Stop after this many batches (at least 1; ``None``: the whole dataloader).

    Returns:
        The rows (one :class:`LayerReport` per layer) and, per layer, :meth:`RoutingStats.matrices`.
    """
    if max_batches is not None:
        check_positive_int("max_batches", max_batches)
    was_training = model.training
    model.eval()
    capture = RoutingCapture(model)
    device = next(model.parameters()).device
    stats: dict[str, RoutingStats] = {}
    try:
        for index, batch in enumerate(dataloader):
            if max_batches is not None and index >= max_batches:
                break
            inputs = input_fn(batch)
            model(inputs.to(device) if isinstance(inputs, Tensor) else inputs)
            labels = label_fn(batch) if label_fn is not None else None
            labels = labels.to(device) if isinstance(labels, Tensor) else None
            if num_labels is None:  # from the first batch: later labels outside [0, L) are ignored
                num_labels = int(labels.max()) + 1 if labels is not None and labels.numel() else 0
            for name, record in capture.records.items():
                if name not in stats:
                    stats[name] = RoutingStats(capture.layers[name][1], num_labels, dead_fraction).to(device)
                fits = labels is not None and labels.numel() == record.probs.shape[0]
                stats[name].update(record, labels if fits else None)
            capture.clear()
    finally:
        capture.remove()
        model.train(was_training)
    rows, matrices = [], {}
    for name, layer_stats in stats.items():
        experts = layer_stats.num_experts
        values = {key: float(value) for key, value in layer_stats.compute().items()}
        has_labels = bool(num_labels) and float(layer_stats.joint.sum()) > 0
        rows.append(LayerReport(
            layer=name, num_experts=experts, tokens=int(layer_stats.tokens), usage=values["usage"],
            usage_max=math.log2(experts), imbalance=values["imbalance"], dead_experts=int(values["dead_experts"]),
            dropped=values["dropped"], router_z=values["router_z"],
            mutual_information=values["mutual_information"] if has_labels else float("nan"),
            mi_ceiling=min(math.log2(experts), values["label_marginal_entropy"]) if has_labels else float("nan"),
            label_entropy=values["label_entropy"] if has_labels else float("nan"),
        ))
        matrices[name] = {key: value.cpu() for key, value in layer_stats.matrices().items()}
    return rows, matrices


def _figure_path(out: Path, stem: str, layer: str) -> Path:
    """Where :func:`write_report` draws ``layer``'s figure beside the table ``{stem}.csv``."""
    return out / f"{stem}_{layer.replace('.', '_')}.png"


def _remove_old_figures(out: Path, stem: str) -> None:
    """Delete the figures of the layers listed by the ``{stem}.csv`` about to be replaced, so none outlives its table."""
    table = out / f"{stem}.csv"
    if not table.is_file():
        return
    try:
        with table.open(newline="") as handle:
            layers = [row.get("layer") for row in csv.DictReader(handle)]
    except (OSError, csv.Error, UnicodeDecodeError):
        return
    for layer in layers:
        if layer:
            _figure_path(out, stem, layer).unlink(missing_ok=True)


def write_report(rows: list[LayerReport], matrices: dict[str, dict[str, Tensor]], out: str | Path,
                 label_names: list[str] | None = None, split: str | None = None) -> list[Path]:
    """Write a table (one row per layer) and per layer a figure (expert x label heatmap, usage bars,
    co-activation) into folder ``out``; returns the paths.

    The table is ``routing_{split}.csv`` (``routing.csv`` without a split), the figures
    ``routing_{split}_{layer}.png`` (dots in the layer's name as ``_``). The figures of the table
    replaced are removed first: a figure never sits beside a table that does not list its layer.
    """
    out, stem = Path(out), "routing" if split is None else f"routing_{split}"
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_figures(out, stem)
    paths = [out / f"{stem}.csv"]
    with open(paths[0], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(LayerReport)])
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
    for row in rows:
        paths.append(_figure_path(out, stem, row.layer))
        figure = routing_figure(matrices[row.layer], label_names=label_names, title=row.layer)
        figure.savefig(paths[-1])
    return paths
