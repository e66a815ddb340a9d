"""Lightning callbacks: checkpoints, TensorBoard figures and the initialisation search."""

from gmnn.callbacks.checkpoint import LastCheckpoint
from gmnn.callbacks.figures import DecompositionFigures
from gmnn.callbacks.init_search import InitSearch
from gmnn.callbacks.routing_monitor import RoutingMonitor

__all__ = ["DecompositionFigures", "InitSearch", "LastCheckpoint", "RoutingMonitor"]
