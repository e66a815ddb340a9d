"""Routing analysis of MoE models (gmnn's or Hugging Face's): capture, report, plots.

- :mod:`gmnn.analysis.capture`: find a model's MoE layers and record their routing;
- :mod:`gmnn.analysis.report`: :func:`routing_report` over a dataloader, :func:`write_report` as CSV + PNG;
- :mod:`gmnn.analysis.hf`: a Hugging Face model folder (``save_pretrained``) loaded for the report;
- :mod:`gmnn.analysis.plots`: the per-layer figure;
- :mod:`gmnn.analysis.probe`: a linear probe of the router inputs beside the router's top-1 (:func:`probe_report`);
- :mod:`gmnn.cli.analyze`: ``gmnn analyze``.

The statistics themselves are :class:`gmnn.metrics.RoutingStats`.
"""

from gmnn.analysis.capture import MODEL_LAYER, SIGMOID_BLOCKS, RoutingCapture, find_moe_layers, routing_from_output
from gmnn.analysis.hf import load_model_folder
from gmnn.analysis.plots import routing_figure
from gmnn.analysis.probe import ProbeResult, fit_linear_probe, probe_report, router_inputs
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
    "ProbeResult",
    "RoutingCapture",
    "RoutingStats",
    "SIGMOID_BLOCKS",
    "assignment",
    "default_input",
    "default_label",
    "default_tokens",
    "find_moe_layers",
    "fit_linear_probe",
    "format_table",
    "label_entropies",
    "load_model_folder",
    "probe_report",
    "routing_figure",
    "routing_from_output",
    "router_inputs",
    "routing_report",
    "top1_changed",
    "write_report",
]
