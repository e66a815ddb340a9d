"""Routing analysis of MoE models: find the MoE layers, record their routing, measure specialisation.

Works on gmnn's :class:`~gmnn.nn.MoELayer` (its ``last_routing`` record),
Hugging Face MoE blocks (a forward hook on their router: Mixtral, Qwen-MoE,
OLMoE, ... whose ``gate``/``router`` returns the router logits, optionally with
the chosen experts) and gmnn's image variants (the ``MoEOutput.gate_probs`` of
the whole model). :class:`RoutingStats` is a torchmetrics ``Metric`` of sums
(exact under DDP); :func:`routing_report` runs a model over a dataloader and
returns the per-layer numbers; ``gmnn analyze`` writes them as CSV + PNG.
Metrics in bits, following Krishnamurthy et al. (2023) for the mutual
information and Fedus et al. (2021) / Zoph et al. (2022) for load and z.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from gmnn.metrics import entropy_bits, mutual_information_bits
from gmnn.nn.moe.layer import MoELayer
from gmnn.nn.moe.record import Routing
from gmnn.validation import check_non_negative, check_positive_int

MODEL_LAYER = "gate"  # the name of a whole gmnn image model's routing (its gate)


# --------------------------------------------------------------------------- finding layers and hooks
def _router_of(module: nn.Module) -> tuple[nn.Module, int] | None:
    """A Hugging Face style block's router and its number of experts (``gate``/``router`` beside ``experts``)."""
    if not isinstance(getattr(module, "experts", None), nn.Module):
        return None
    for name in ("gate", "router"):
        router = getattr(module, name, None)
        router = getattr(router, "classifier", router)  # Switch Transformers: router.classifier is the Linear
        weight = getattr(router, "weight", None)
        if isinstance(router, nn.Module) and isinstance(weight, Tensor) and weight.dim() == 2:
            return router, weight.shape[0]
    return None


def find_moe_layers(model: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """Every MoE layer of ``model`` by module name: ``{name: (module to hook, num_experts)}``.

    gmnn ``MoELayer``s first, then Hugging Face blocks (their router module);
    a model with neither that has ``num_experts`` (a gmnn image variant) is
    one layer named ``"gate"``, read from its ``MoEOutput``.
    """
    found: dict[str, tuple[nn.Module, int]] = {}
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        entry = (module, module.num_experts) if isinstance(module, MoELayer) else _router_of(module)
        if entry is not None:
            found[name] = entry
            inside.append(name)
    if not found and isinstance(getattr(model, "num_experts", None), int):
        found[MODEL_LAYER] = (model, model.num_experts)
    return found


def _top_k_of(module: nn.Module, default: int = 1) -> int:
    found = [getattr(module, name, None) for name in ("top_k", "num_experts_per_tok", "k")]
    return next((value for value in found if isinstance(value, int)), default)


def routing_from_output(module: nn.Module, output: Any, num_experts: int, top_k: int | None = None) -> Routing | None:
    """The :class:`Routing` of one call of a hooked module (gmnn layer, HF router, gmnn model), detached.

    A router that returns only logits (e.g. a ``Linear`` gate) selects its ``top_k`` largest.
    """
    if isinstance(module, MoELayer):
        return getattr(module, "last_routing", None)  # the layer before issue 14 has none: RoutingCapture hooks its router
    if hasattr(output, "gate_probs"):  # a gmnn image model's MoEOutput
        return Routing(probs=output.gate_probs.detach(), selected=None if output.selected is None else output.selected.detach(),
                       logits=None if output.gate_logits is None else output.gate_logits.detach(),
                       dropped=None if output.dropped is None else output.dropped.detach())
    items = output if isinstance(output, (tuple, list)) else (output,)
    tensors = [t for t in items if isinstance(t, Tensor)]
    logits = next((t for t in tensors if t.is_floating_point() and t.shape[-1] == num_experts), None)
    if logits is None:
        return None
    logits = logits.detach().reshape(-1, num_experts).float()
    chosen = next((t for t in tensors if not t.is_floating_point() and t.dim() >= 2 and t.numel() % logits.shape[0] == 0), None)
    selected = chosen.detach().reshape(logits.shape[0], -1).long() if chosen is not None else \
        logits.topk(min(top_k or _top_k_of(module), num_experts), dim=-1).indices
    return Routing(probs=torch.softmax(logits, dim=-1), selected=selected, logits=logits)


class RoutingCapture:
    """Forward hooks that keep the routing of the last call of every MoE layer of a model.

    ``records[name]`` is that layer's latest :class:`Routing` (detached);
    :meth:`clear` forgets them, :meth:`remove` takes the hooks off.

    Args:
        model: Any ``nn.Module`` holding MoE layers (see :func:`find_moe_layers`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = find_moe_layers(model)
        self.records: dict[str, Routing] = {}
        self.handles = []
        blocks = dict(model.named_modules())  # an HF layer's name is its block's, which knows top_k
        for name, (module, experts) in self.layers.items():
            if isinstance(module, MoELayer) and isinstance(module.router, nn.Linear) and not hasattr(module, "last_routing"):
                hook = self._old_layer_hook(name, module)  # the layer before issue 14 exposes no record
                self.handles.append(module.router.register_forward_hook(hook))
            else:
                top_k = _top_k_of(blocks.get(name, module), _top_k_of(module))
                self.handles.append(module.register_forward_hook(self._hook(name, experts, top_k)))

    def _hook(self, name: str, experts: int, top_k: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            routing = routing_from_output(module, output, experts, top_k)
            if routing is not None:
                self.records[name] = routing
        return hook

    def _old_layer_hook(self, name: str, layer: MoELayer) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, logits: Tensor) -> None:
            logits = logits.detach()
            self.records[name] = Routing(torch.softmax(logits, -1), logits.topk(layer.k, dim=-1).indices, logits=logits)
        return hook

    def clear(self) -> None:
        self.records = {}

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()


# --------------------------------------------------------------------------- the metric
def assignment(routing: Routing) -> Tensor:
    """Each token's routed experts as a ``[T, E]`` 0/1 matrix (Soft MoE: the probabilities), padding rows 0."""
    if routing.selected is None:
        assigned = routing.probs.float()
    else:
        chosen = routing.selected
        assigned = torch.zeros_like(routing.probs, dtype=torch.float32).scatter_add(
            -1, chosen.clamp_min(0), (chosen >= 0).float())
    return assigned if routing.mask is None else assigned * routing.mask.unsqueeze(-1).float()


class RoutingStats(Metric):
    """Routing statistics of one MoE layer over many calls; every state is a sum (exact under DDP).

    ``compute()`` returns (bits where entropies): ``usage`` (entropy of the
    experts' share of routed token-expert pairs; log2 E when balanced),
    ``imbalance`` (max / mean load; 1 when balanced), ``dead_experts`` (experts
    whose share is below ``dead_fraction / E``), ``dropped`` (fraction of pairs
    dropped by capacity), ``router_z`` (mean ``logsumexp(logits)^2``, NaN without
    logits), and with labels ``mutual_information`` I(top-1 expert; label),
    ``label_entropy`` (mean over labels of the entropy of the label's top-1
    expert distribution) and ``label_marginal_entropy`` H(label), so that
    ``min(log2 E, H(label))`` is the ceiling of the mutual information.
    :meth:`matrices` gives ``joint [E, L]`` (top-1 expert x label counts),
    ``load [E]`` and ``coactivation [E, E]`` (tokens routed to both experts).

    Args:
        num_experts: Experts E of the layer.
        num_labels: Label values L (0: no labels).
        dead_fraction: An expert is dead below this fraction of the fair share 1/E.
    """

    full_state_update = False

    def __init__(self, num_experts: int, num_labels: int = 0, dead_fraction: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int("num_experts", num_experts)
        check_non_negative("num_labels", num_labels)
        check_non_negative("dead_fraction", dead_fraction)
        self.num_experts, self.num_labels, self.dead_fraction = num_experts, int(num_labels), float(dead_fraction)
        e, l64 = num_experts, torch.float64
        self.add_state("load", torch.zeros(e, dtype=l64), dist_reduce_fx="sum")
        self.add_state("coactivation", torch.zeros(e, e, dtype=l64), dist_reduce_fx="sum")
        self.add_state("joint", torch.zeros(e, max(1, self.num_labels), dtype=l64), dist_reduce_fx="sum")
        for name in ("tokens", "dropped", "z_sum", "z_tokens"):
            self.add_state(name, torch.zeros((), dtype=l64), dist_reduce_fx="sum")

    def update(self, routing: Routing, labels: Tensor | None = None) -> None:
        """Add one call's routing (``T`` tokens) and optional per-token labels (``T`` values; < 0 ignored)."""
        assigned = assignment(routing)  # padding rows are 0
        mask = routing.mask
        tokens = assigned.shape[0] if mask is None else mask.sum()
        self.tokens += tokens
        self.load += assigned.sum(0).double()  # its sum: the routed (token, expert) pairs
        self.coactivation += (assigned.t() @ assigned).double()
        if routing.dropped is not None:
            dropped = routing.dropped & (routing.selected >= 0)
            self.dropped += (dropped if mask is None else dropped & mask.unsqueeze(-1)).sum()
        z = (routing.losses or {}).get("z")  # the layer's own masked mean z-loss, when it computed one
        if z is not None:
            self.z_sum += z.double() * tokens
            self.z_tokens += tokens
        elif routing.logits is not None:
            z_tokens = torch.logsumexp(routing.logits.float(), -1).pow(2)
            self.z_sum += (z_tokens if mask is None else z_tokens * mask).sum().double()
            self.z_tokens += tokens
        if labels is not None and self.num_labels > 0:
            labels = labels.reshape(-1).long()
            counted = (labels >= 0) & (labels < self.num_labels)
            counted = (counted if mask is None else counted & mask).double()
            cell = routing.top1 * self.num_labels + labels.clamp(0, self.num_labels - 1)
            self.joint.view(-1).index_add_(0, cell, counted)

    def matrices(self) -> dict[str, Tensor]:
        """``joint [E, L]``, ``load [E]`` and ``coactivation [E, E]`` (synced under DDP like ``compute``)."""
        return {"joint": self.joint.clone(), "load": self.load.clone(), "coactivation": self.coactivation.clone()}

    def compute(self) -> dict[str, Tensor]:
        share = self.load / self.load.sum().clamp_min(1e-12)
        per_label = self.joint / self.joint.sum(0, keepdim=True).clamp_min(1e-12)
        seen = self.joint.sum(0) > 0
        labels = self.joint.sum(0) / self.joint.sum().clamp_min(1e-12)
        nan = torch.full((), float("nan"), dtype=torch.float64, device=share.device)
        values = {
            "usage": entropy_bits(share),
            "imbalance": share.max() / share.mean().clamp_min(1e-12),
            "dead_experts": (share < self.dead_fraction / self.num_experts).sum().double(),
            "dropped": self.dropped / self.load.sum().clamp_min(1),
            "router_z": self.z_sum / self.z_tokens if self.z_tokens > 0 else nan,
        }
        if self.num_labels > 0:
            values["mutual_information"] = mutual_information_bits(self.joint).double()
            values["label_entropy"] = (entropy_bits(per_label, dim=0) * seen).sum() / seen.sum().clamp_min(1)
            values["label_marginal_entropy"] = entropy_bits(labels)
        return {name: value.float() + 0.0 for name, value in values.items()}  # + 0.0: no "-0.0"


def top1_changed(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per layer, the fraction of tokens whose top-1 expert differs between two routings of the same tokens."""
    return {name: (after[name] != before[name]).float().mean() for name in after if name in before}


# --------------------------------------------------------------------------- reports
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
    import matplotlib.pyplot as plt

    from gmnn.callbacks.routing_monitor import routing_figure

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
        plt.close(figure)
    return paths


def main(args: list[str] | None = None) -> None:
    """``gmnn analyze --ckpt_path CKPT --config CONFIG [--out DIR] [--split val] [--max_batches N]``.

    Loads a gmnn checkpoint, builds the data module of the run's config (its
    ``config.yaml``, by default next to the checkpoint's run folder), and writes
    :func:`routing_report` of the chosen split as ``routing_{split}.csv`` and one
    ``routing_{split}_{layer}.png`` per layer (:func:`write_report`).
    """
    parser = argparse.ArgumentParser(prog="gmnn analyze", description=main.__doc__)
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--config", default=None, help="the run's config.yaml (default: beside checkpoints/)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/routing)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--max_batches", type=int, default=None, help="at most this many batches (>= 1; default: all)")
    parsed = parser.parse_args(args)
    if parsed.max_batches is not None:
        check_positive_int("--max_batches", parsed.max_batches)
    import yaml
    from jsonargparse import ArgumentParser

    from gmnn.checkpoints.variants import saved_class

    ckpt = Path(parsed.ckpt_path)
    if not ckpt.is_file():
        raise ValueError(f"--ckpt_path {ckpt} does not exist")
    config_path = Path(parsed.config) if parsed.config else ckpt.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"--config {config_path} does not exist: pass the run's config.yaml")
    if (model_class := saved_class(ckpt)) is None:
        raise ValueError(f"--ckpt_path {ckpt} records no model class: is it a gmnn checkpoint?")
    model = model_class.load_from_checkpoint(ckpt, map_location="cpu")
    data_parser = ArgumentParser()
    data_parser.add_subclass_arguments(__import__("pytorch_lightning").LightningDataModule, "data")
    data_config = yaml.safe_load(config_path.read_text())["data"]
    data = data_parser.instantiate_classes(data_parser.parse_object({"data": data_config})).data
    data.setup("fit" if parsed.split != "test" else "test")
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "test": data.test_dataloader}[parsed.split]()
    rows, matrices = routing_report(model, loader, num_labels=getattr(data, "num_labels", None),
                                    max_batches=parsed.max_batches)
    out = Path(parsed.out) if parsed.out else ckpt.parent.parent / "routing"
    for path in write_report(rows, matrices, out, getattr(data, "label_names", None), split=parsed.split):
        print(path)
