"""Lightning callbacks: checkpoints and TensorBoard figures."""

from gmnn.callbacks.checkpoint import LastCheckpoint

__all__ = ["LastCheckpoint"]
