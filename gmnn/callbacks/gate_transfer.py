"""Reuse a trained gate with new experts (the reference's gate-transfer experiment)."""

from __future__ import annotations

from gmnn import pl
from gmnn.checkpoints.reuse import load_gate


class GateTransfer(pl.Callback):
    """Load the gate of a trained gmnn checkpoint before training, and (by default) keep it fixed.

    The reference's transfer experiments (``aaai_2022/notebooks/mnist_classification.ipynb`` of
    ``yamsgithub/modular_deep_learning``, "Experiment 1" and "Experiment 2") train an MoE, then train new
    experts under its learnt gate with the gate's parameters fixed: experts from the default initialisation
    (``..._rand_wts``) or from the same initial weights as the first model's experts (``..._same_wts``; in
    gmnn: the same ``seed_everything`` as the first run, since the experts are built before the gate).
    The experts may come from a checkpoint as usual (``init_experts_from``, ``freeze_experts``).

    Args:
        checkpoint: A gmnn checkpoint of a gated variant with the same gate architecture.
        freeze: Keep the loaded gate's parameters fixed (the reference's ``requires_grad = False``).
        strict: Require the same gate architecture; ``False`` copies only the tensors whose names
            and shapes match and trains the gate from there (the reference's ``train_from_model``
            in ``aaai_2022/src/moe_with_attention_training.py``: a plain gate warm-started from an
            attention gate with ``load_state_dict(..., strict=False)``; use with ``freeze: false``).
    """

    def __init__(self, checkpoint: str, freeze: bool = True, strict: bool = True) -> None:
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f"checkpoint must be a checkpoint path, got {checkpoint!r}")
        self.checkpoint = checkpoint
        self.freeze = freeze
        self.strict = strict
        self.loaded: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        gate = getattr(pl_module, "gate", None)
        if gate is None:
            raise ValueError(f"GateTransfer needs a model with a gate; {type(pl_module).__name__} has none")
        self.loaded = load_gate(gate, self.checkpoint, strict=self.strict, option="GateTransfer checkpoint")
        gate.requires_grad_(not self.freeze)
