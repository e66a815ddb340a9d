"""The checkpoint hooks every gmnn model shares (mixins of its LightningModules)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from gmnn.checkpoints.compatibility import (
    RNG_KEY,
    check_checkpoint_matches,
    explain_overrides,
    rng_states,
    set_rng_states,
)
from gmnn.checkpoints.variants import CLASS_KEY, class_path_of, variant_of_checkpoint

TEMPERATURE_KEY = "gmnn_temperature"


class CheckpointHooks:
    """Checkpoint hooks of every gmnn model: record the class and the random state on save; on load refuse
    another class or architecture and, when resuming ``fit``, restore the random state.

    Needs what a LightningModule has (``_trainer``, ``state_dict``, ``hparams``).
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASS_KEY] = class_path_of(self)
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another class or architecture; when resuming ``fit``, restore the random state."""
        self.check_and_restore_random_state(checkpoint)

    def check_and_restore_random_state(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another class or architecture; when resuming ``fit``, restore the random state."""
        trainer = self._trainer
        source = f"checkpoint {trainer.ckpt_path}" if trainer is not None and trainer.ckpt_path else "the checkpoint"
        check_checkpoint_matches(self, checkpoint, source)
        if trainer is not None and trainer.state.fn == "fit" and RNG_KEY in checkpoint:
            set_rng_states(checkpoint[RNG_KEY])

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path | IO[bytes], *args: Any, **kwargs: Any
    ) -> Any:
        """Load a checkpoint, rebuilding the class that wrote it.

        ``MoEModule.load_from_checkpoint(path)`` returns a ``TopKMoE`` for a
        top-k checkpoint; ``DenseMoE.load_from_checkpoint`` on a checkpoint of
        another variant raises a ``ValueError`` naming both classes. The file is read as tensors
        and plain values only (``weights_only=True`` unless given): one that holds anything else,
        or cannot be read, raises a one-line ``ValueError`` naming it.
        """
        target = variant_of_checkpoint(cls, checkpoint_path)
        if not issubclass(target, CheckpointHooks):
            raise ValueError(f"checkpoint {checkpoint_path} holds a {target.__name__}, not a gmnn model: "
                             f"load it with {target.__name__}.load_from_checkpoint")
        loader = super(CheckpointHooks, target).load_from_checkpoint.__func__  # type: ignore[attr-defined]
        if len(args) < 4 and kwargs.get("weights_only") is None:  # Lightning's load too reads tensors and plain values only
            kwargs["weights_only"] = True
        try:
            return loader(target, checkpoint_path, *args, **kwargs)
        except ValueError as error:  # name the keyword arguments that made the model not fit
            raise explain_overrides(error, checkpoint_path, kwargs) from None


class GateCheckpointHooks(CheckpointHooks):
    """:class:`CheckpointHooks` of a gated mixture (:class:`~gmnn.models.base.MoEModule`): the gate temperature
    too is recorded and restored, and a loaded model takes its experts from the checkpoint (not ``init_experts_from``).
    """

    temperature: float

    def set_temperature(self, epoch: int) -> None:
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[TEMPERATURE_KEY] = self.temperature

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another variant or architecture; restore the temperature the model
        was last trained with (training recomputes it per epoch) and, when resuming ``fit``, the random state.
        """
        super().on_load_checkpoint(checkpoint)
        self.set_temperature(int(checkpoint.get("epoch", 0)))
        self.temperature = float(checkpoint.get(TEMPERATURE_KEY, self.temperature))

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path | IO[bytes], *args: Any, **kwargs: Any
    ) -> Any:
        """:meth:`CheckpointHooks.load_from_checkpoint`, the experts being in the checkpoint itself."""
        kwargs.setdefault("init_experts_from", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
