"""Lightning callbacks: checkpoints, the run's record, figures, predictions, initialisation search, routing."""

from gmnn.callbacks.checkpoint import AtomicModelCheckpoint, LastCheckpoint
from gmnn.callbacks.figures import DecompositionFigures
from gmnn.callbacks.gate_transfer import GateTransfer
from gmnn.callbacks.init_search import InitSearch
from gmnn.callbacks.predictions import PredictionWriter
from gmnn.callbacks.routing_monitor import RoutingMonitor
from gmnn.callbacks.run_config import RunConfig
from gmnn.callbacks.unfreeze import UnfreezeExperts
from gmnn.models.revival import ReviveDeadExperts

__all__ = [
    "AtomicModelCheckpoint",
    "DecompositionFigures",
    "GateTransfer",
    "InitSearch",
    "LastCheckpoint",
    "PredictionWriter",
    "ReviveDeadExperts",
    "RoutingMonitor",
    "RunConfig",
    "UnfreezeExperts",
]
