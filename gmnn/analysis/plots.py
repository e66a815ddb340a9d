"""Figures of a layer's routing, drawn without pyplot (no backend is chosen or changed)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from torch import Tensor


def routing_figure(matrices: dict[str, Tensor], label_names: Sequence[str] | None = None, title: str = "",
                   stability: Sequence[float] | None = None) -> Figure:
    """Panels of one layer: expert x label heatmap (each label's top-1 expert distribution), usage
    bars (share of routed token-expert pairs), co-activation (row e, column f: the fraction of
    expert e's tokens that expert f also gets) and, when given, the stability history (fraction of probe tokens whose top-1 expert changed)."""
    joint, load, coactivation = (matrices[key].double().cpu() for key in ("joint", "load", "coactivation"))
    experts = joint.shape[0]
    has_labels = joint.sum() > 0
    panels = (1 if has_labels else 0) + 2 + (1 if stability else 0)
    fig = Figure(figsize=(3.2 * panels, 3.0), dpi=72)
    axes = fig.subplots(1, panels, squeeze=False)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.2, top=0.82, wspace=0.4)
    axes = list(axes[0])
    if has_labels:
        ax = axes.pop(0)
        per_label = joint / joint.sum(0, keepdim=True).clamp_min(1e-12)
        ax.imshow(per_label.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        names = list(label_names) if label_names and len(label_names) == joint.shape[1] else range(joint.shape[1])
        ax.set(title="top-1 expert per label", xticks=range(joint.shape[1]), yticks=range(experts), ylabel="expert")
        ax.set_xticklabels(names, rotation=30, fontsize="small")
    ax = axes.pop(0)
    ax.bar(range(experts), (load / load.sum().clamp_min(1e-12)).numpy())
    ax.axhline(1 / experts, color="grey", linestyle=":")
    ax.set(title="usage (share of routed pairs)", xlabel="expert", xticks=range(experts))
    ax = axes.pop(0)
    conditional = coactivation / coactivation.diagonal().clamp_min(1e-12).unsqueeze(1)
    ax.imshow(conditional.fill_diagonal_(float("nan")).numpy(), vmin=0, vmax=1, cmap="magma", aspect="auto")
    ax.set(title="co-activation P(col | row)", xlabel="expert", ylabel="expert", xticks=range(experts), yticks=range(experts))
    if stability:
        ax = axes.pop(0)
        ax.plot(range(1, len(stability) + 1), list(stability), marker="o")
        ax.set(title="top-1 changed on probe", xlabel="epoch", ylim=(0, 1), xticks=range(1, len(stability) + 1))
    fig.suptitle(title, fontsize="small")
    return fig
