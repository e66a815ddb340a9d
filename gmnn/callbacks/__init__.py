"""Lightning callbacks: checkpoints and TensorBoard figures."""

from gmnn.callbacks.checkpoint import LastCheckpoint
from gmnn.callbacks.figures import DecompositionFigures

__all__ = ["DecompositionFigures", "LastCheckpoint"]
