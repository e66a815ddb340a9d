"""Routing analysis of MoE models (gmnn's or Hugging Face's): capture, report, plots.

- :mod:`gmnn.analysis.capture`: find a model's MoE layers and record their routing;
- :mod:`gmnn.analysis.report`: :func:`routing_report` over a dataloader, :func:`write_report` as CSV + PNG;
- :mod:`gmnn.analysis.hf`: a Hugging Face model folder (``save_pretrained``) loaded for the report;
- :mod:`gmnn.analysis.plots`: the per-layer figure;
- :mod:`gmnn.cli.analyze`: ``gmnn analyze``.

The statistics themselves are :class:`gmnn.metrics.RoutingStats`.
"""

from gmnn.analysis.capture import MODEL_LAYER, SIGMOID_BLOCKS, RoutingCapture, find_moe_layers, routing_from_output
from gmnn.analysis.hf import load_model_folder
from gmnn.analysis.plots import routing_figure
from gmnn.analysis.report import (
    LayerReport,
    default_input,
    default_label,
    default_tokens,
    format_table,
    label_entropies,
    routing_report,
    write_report,
)
from gmnn.metrics.routing import RoutingStats, assignment, top1_changed

__all__ = [
    "MODEL_LAYER",
    "LayerReport",
    "RoutingCapture",
    "RoutingStats",
    "SIGMOID_BLOCKS",
    "assignment",
    "default_input",
    "default_label",
    "default_tokens",
    "find_moe_layers",
    "format_table",
    "label_entropies",
    "load_model_folder",
    "routing_figure",
    "routing_from_output",
    "routing_report",
    "top1_changed",
    "write_report",
]
