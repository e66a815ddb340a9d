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
from gmnn.analysis.hf import load_model_folder
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


def default_tokens(batch: Any) -> Tensor | None:
    """The token ids of a batch for the top-token counts: :func:`default_input` if it is an integer tensor."""
    inputs = default_input(batch)
    return inputs if isinstance(inputs, Tensor) and not inputs.is_floating_point() and not inputs.is_complex() else None


def default_label(batch: Any) -> Tensor | None:
    """The per-token label of a batch: the last entry of a tuple of two or more (the source of
    :class:`gmnn.data.MixedSourceTextDataModule`, an image model's class); ``None`` otherwise."""
    return batch[-1] if isinstance(batch, (list, tuple)) and len(batch) >= 2 else None


def _vocab_size(model: nn.Module) -> int | None:
    """The model's vocabulary size: ``config.vocab_size`` (Hugging Face) or ``num_classes`` of a gmnn byte model."""
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None) if config is not None else None
    return size if isinstance(size, int) and size > 0 else None


class _TokenCounts:
    """Routed (expert, token id) pairs of one layer as a fixed ``[E, V]`` int64 count (grown only up to the
    largest id seen when V is not known): memory never depends on the length of the stream."""

    def __init__(self, num_experts: int, vocab_size: int | None, device: torch.device) -> None:
        self.counts = torch.zeros(num_experts, vocab_size or 1, dtype=torch.int64, device=device)
        self.fixed = vocab_size is not None

    def update(self, selected: Tensor, tokens: Tensor, mask: Tensor | None) -> None:
        tokens = tokens.reshape(-1).long()
        vocab = self.counts.shape[1]
        top = int(tokens.max()) + 1 if tokens.numel() and not self.fixed else 0
        if top > vocab:
            self.counts = torch.cat([self.counts, self.counts.new_zeros(self.counts.shape[0], top - vocab)], 1)
            vocab = top
        valid = (selected >= 0) & ((tokens >= 0) & (tokens < vocab)).unsqueeze(-1)
        if mask is not None:
            valid &= mask.unsqueeze(-1)
        cells = selected.clamp_min(0) * vocab + tokens.clamp(0, vocab - 1).unsqueeze(-1)
        self.counts.view(-1).index_add_(0, cells.reshape(-1), valid.reshape(-1).long())


@torch.no_grad()
def routing_report(
    model: nn.Module | str | Path,
    dataloader: Iterable[Any],
    label_fn: Callable[[Any], Tensor | None] | None = default_label,
    input_fn: Callable[[Any], Any] = default_input,
    num_labels: int | None = None,
    dead_fraction: float = 0.1,
    max_batches: int | None = None,
    token_fn: Callable[[Any], Tensor | None] | None = default_tokens,
    vocab_size: int | None = None,
) -> tuple[list[LayerReport], dict[str, dict[str, Tensor]]]:
    """Run ``model`` (eval mode) over ``dataloader`` and measure every MoE layer's routing.

    Memory is bounded whatever the length of the stream: per layer only fixed-size sums are kept
    (:class:`RoutingStats`, and an ``[E, V]`` count of routed (expert, token id) pairs), never per-token lists.

    Args:
        model: A gmnn model (``MoETransformerLM``, an image variant), a Hugging Face MoE model (any family whose
            router returns its logits: see :func:`gmnn.analysis.find_moe_layers`), or the folder of one written by
            ``save_pretrained`` (loaded with ``AutoModelForCausalLM``).
        dataloader: Batches, e.g. a ``DataLoader`` or any iterable of ``(input_ids [B, L], labels [B, L])``;
            ``input_fn(batch)`` is passed to ``model``.
        label_fn: Per-token labels of a batch (e.g. the source), or ``None`` for no label metrics.
        input_fn: The model input of a batch.
        num_labels: Label values L (default: the largest label of the first batch + 1).
        dead_fraction: See :class:`RoutingStats`.
        max_batches: Stop after this many batches (at least 1; ``None``: the whole dataloader).
        token_fn: The token ids of a batch (one per routed token), counted per expert for the top tokens;
            ``None``: no counts.
        vocab_size: Columns V of the token counts (default: the model's ``config.vocab_size``, else the largest
            id seen + 1). Token ids are checked against a Hugging Face model's vocabulary.

    Returns:
        The rows (one :class:`LayerReport` per layer) and, per layer, :meth:`RoutingStats.matrices` plus
        ``tokens [E, V]`` (int64 counts of the routed pairs of each token id, when ``token_fn`` gives ids).
    """
    if max_batches is not None:
        check_positive_int("max_batches", max_batches)
    if not isinstance(model, nn.Module):
        model = load_model_folder(model)
    model_vocab = _vocab_size(model)
    vocab_size = vocab_size or model_vocab
    was_training = model.training
    model.eval()
    capture = RoutingCapture(model)
    device = next(model.parameters()).device
    stats: dict[str, RoutingStats] = {}
    counts: dict[str, _TokenCounts] = {}
    try:
        for index, batch in enumerate(dataloader):
            if max_batches is not None and index >= max_batches:
                break
            inputs = input_fn(batch)
            tokens = token_fn(batch) if token_fn is not None else None
            if model_vocab is not None and isinstance(tokens, Tensor) and tokens.numel() and int(tokens.max()) >= model_vocab:
                raise ValueError(f"token id {int(tokens.max())} of the data is outside the model's vocabulary of "
                                 f"{model_vocab} tokens")
            model(inputs.to(device) if isinstance(inputs, Tensor) else inputs)
            labels = label_fn(batch) if label_fn is not None else None
            labels = labels.to(device) if isinstance(labels, Tensor) else None
            tokens = tokens.to(device) if isinstance(tokens, Tensor) else None
            if num_labels is None:  # from the first batch: later labels outside [0, L) are ignored
                num_labels = int(labels.max()) + 1 if labels is not None and labels.numel() else 0
            for name, record in capture.records.items():
                if name not in stats:
                    stats[name] = RoutingStats(capture.layers[name][1], num_labels, dead_fraction).to(device)
                fits = labels is not None and labels.numel() == record.probs.shape[0]
                stats[name].update(record, labels if fits else None)
                if tokens is not None and tokens.numel() == record.probs.shape[0] and record.selected is not None:
                    if name not in counts:
                        counts[name] = _TokenCounts(capture.layers[name][1], vocab_size, device)
                    counts[name].update(record.selected, tokens, record.mask)
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
        if name in counts:
            matrices[name]["tokens"] = counts[name].counts.cpu()
    return rows, matrices


def label_entropies(joint: Tensor) -> Tensor:
    """Per label, the entropy in bits of its top-1 expert distribution, from ``joint [E, L]`` (NaN: label unseen)."""
    joint = joint.double()
    seen = joint.sum(0)
    per_label = joint / seen.clamp_min(1e-300)
    bits = -(torch.special.xlogy(per_label, per_label)).sum(0) / math.log(2)
    return (bits + 0.0).masked_fill(seen == 0, float("nan"))


def format_table(rows: list[LayerReport]) -> str:
    """The rows as an aligned text table (bits for usage, mutual information and label entropy)."""
    header = ["layer", "experts", "tokens", "usage/max", "imbalance", "dead", "MI/ceiling", "label_entropy"]
    lines = [[row.layer, str(row.num_experts), str(row.tokens), f"{row.usage:.3f}/{row.usage_max:.3f}",
              f"{row.imbalance:.3f}", str(row.dead_experts), f"{row.mutual_information:.3f}/{row.mi_ceiling:.3f}",
              f"{row.label_entropy:.3f}"] for row in rows]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
                     for cells in [header, *lines])


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


def _label_name(label_names: list[str] | None, label: int) -> str:
    return label_names[label] if label_names and label < len(label_names) else str(label)


def _expert_rows(row: LayerReport, matrices: dict[str, Tensor], label_names: list[str] | None,
                 token_name: Callable[[int], str], top_tokens: int, dead_fraction: float) -> list[dict[str, Any]]:
    """One row per expert of a layer: share, dead, its most frequent label, its most co-activated partner and
    its most frequent tokens (``token:count`` of the routed pairs, ``;``-separated)."""
    joint, load, coactivation = (matrices[key].double() for key in ("joint", "load", "coactivation"))
    share = load / load.sum().clamp_min(1e-300)
    partner = (coactivation / coactivation.diagonal().clamp_min(1e-300).unsqueeze(1)).fill_diagonal_(-1.0)
    tokens = matrices.get("tokens")
    result = []
    for expert in range(row.num_experts):
        top1 = joint[expert].sum()
        label = int(joint[expert].argmax())
        best = int(partner[expert].argmax()) if row.num_experts > 1 else -1
        listed = ""
        if tokens is not None and top_tokens > 0:
            values, ids = tokens[expert].topk(min(top_tokens, tokens.shape[1]))
            listed = "; ".join(f"{token_name(int(i))}:{int(v)}" for v, i in zip(values, ids) if v > 0)
        result.append({
            "layer": row.layer, "expert": expert, "share": float(share[expert]),
            "dead": bool(share[expert] < dead_fraction / row.num_experts),
            "top_label": _label_name(label_names, label) if top1 > 0 else "",
            "top_label_share": float(joint[expert, label] / top1) if top1 > 0 else float("nan"),
            "partner": best, "partner_share": float(partner[expert, best]) if best >= 0 else float("nan"),
            "top_tokens": listed,
        })
    return result


def _label_rows(row: LayerReport, matrices: dict[str, Tensor], label_names: list[str] | None) -> list[dict[str, Any]]:
    """One row per label seen by a layer: its tokens, the entropy of its top-1 expert distribution, its top expert."""
    joint = matrices["joint"].double()
    if joint.sum() == 0:
        return []
    entropies = label_entropies(joint)
    result = []
    for label in range(joint.shape[1]):
        seen = joint[:, label].sum()
        if seen == 0:
            continue
        expert = int(joint[:, label].argmax())
        result.append({"layer": row.layer, "label": _label_name(label_names, label), "tokens": int(seen),
                       "entropy": float(entropies[label]), "top_expert": expert,
                       "top_expert_share": float(joint[expert, label] / seen)})
    return result


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


EXPERT_FIELDS = ["layer", "expert", "share", "dead", "top_label", "top_label_share", "partner", "partner_share",
                 "top_tokens"]
LABEL_FIELDS = ["layer", "label", "tokens", "entropy", "top_expert", "top_expert_share"]


def write_report(rows: list[LayerReport], matrices: dict[str, dict[str, Tensor]], out: str | Path,
                 label_names: list[str] | None = None, split: str | None = None,
                 token_name: Callable[[int], str] = str, top_tokens: int = 8, dead_fraction: float = 0.1) -> list[Path]:
    """Write the tables and per layer a figure (expert x label heatmap, usage bars, co-activation) into folder
    ``out``; returns the paths.

    With ``stem = routing_{split}`` (``routing`` without a split): ``{stem}.csv`` (one row per layer:
    :class:`LayerReport`), ``{stem}_experts.csv`` (one row per layer and expert: share, dead, most frequent
    label and its share of the expert's top-1 tokens, the most co-activated expert ``partner`` with
    P(partner | expert), and the ``top_tokens`` most frequent tokens as ``token:count``, shown by
    ``token_name``), ``{stem}_labels.csv`` (one row per layer and label: tokens, entropy in bits of the label's
    top-1 expert distribution, its top expert and that expert's share) and the figures
    ``{stem}_{layer}.png`` (dots in the layer's name as ``_``). The figures of the table replaced are removed
    first: a figure never sits beside a table that does not list its layer.
    """
    out, stem = Path(out), "routing" if split is None else f"routing_{split}"
    out.mkdir(parents=True, exist_ok=True)
    _remove_old_figures(out, stem)
    paths = [out / f"{stem}.csv", out / f"{stem}_experts.csv", out / f"{stem}_labels.csv"]
    _write_csv(paths[0], [f.name for f in fields(LayerReport)], [asdict(row) for row in rows])
    _write_csv(paths[1], EXPERT_FIELDS, [expert for row in rows for expert in
                                         _expert_rows(row, matrices[row.layer], label_names, token_name, top_tokens,
                                                      dead_fraction)])
    _write_csv(paths[2], LABEL_FIELDS, [label for row in rows for label in
                                        _label_rows(row, matrices[row.layer], label_names)])
    for row in rows:
        paths.append(_figure_path(out, stem, row.layer))
        figure = routing_figure(matrices[row.layer], label_names=label_names, title=row.layer)
        figure.savefig(paths[-1])
    return paths
