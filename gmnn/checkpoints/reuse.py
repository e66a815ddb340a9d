"""Reusing the experts of a trained checkpoint in a new model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gmnn.checkpoints.reading import read_checkpoint

PREFIX = "experts."
GATE_PREFIX = "gate."


def _saved_under(prefix: str, checkpoint_path: str, option: str, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a gmnn checkpoint under ``prefix``, the prefix removed (a ``ValueError`` naming ``option``)."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"{option} must be an existing checkpoint file, got {checkpoint_path!r}")
    state = read_checkpoint(path, option)["state_dict"]
    source = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not source:
        raise ValueError(f"{option}={checkpoint_path!r} holds no {what} weights (no '{prefix}*' keys)")
    return source


def _mismatched(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> list[str]:
    """Names present on one side only, then names whose shapes differ."""
    return sorted(set(source) ^ set(target)) + sorted(k for k in set(source) & set(target) if source[k].shape != target[k].shape)


def load_experts(experts: nn.Module, checkpoint_path: str) -> None:
    """Copy the expert weights of a gmnn checkpoint (any variant) into ``experts``.

    Raises:
        ValueError: The file is missing, unreadable or holds no experts, or its experts
            differ from ``experts`` in number or architecture (parameter names or shapes).
    """
    source = _saved_under(PREFIX, checkpoint_path, "init_experts_from", "expert")
    target = experts.state_dict()
    mismatched = _mismatched(source, target)
    if mismatched:
        theirs = len({k.split(".")[1] for k in source})
        ours = len({k.split(".")[1] for k in target})
        raise ValueError(
            f"init_experts_from={checkpoint_path!r} has experts of another count or architecture "
            f"({theirs} experts there, {ours} here; differing parameters: {mismatched[:4]})"
        )
    experts.load_state_dict(source)



def load_gate(gate: nn.Module, checkpoint_path: str, strict: bool = True, option: str = "GateTransfer checkpoint") -> list[str]:
    """Copy the gate weights of a gmnn checkpoint (a gated variant) into ``gate``; the names copied.

    With ``strict=False`` only the tensors whose names and shapes match are copied
    (the reference's ``load_state_dict(old_gate.state_dict(), strict=False)``: e.g. the
    shared layers of an attention gate into a plain gate, whose output layer stays new).

    ``option`` is how the user gave the file, named in the errors.

    Raises:
        ValueError: The file is missing, unreadable or holds no gate, or its gate differs from ``gate``
            in architecture (parameter names or shapes; with ``strict=False``: nothing matches).
    """
    source = _saved_under(GATE_PREFIX, checkpoint_path, option, "gate")
    target = gate.state_dict()
    if not strict:
        matching = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
        if not matching:
            raise ValueError(f"{option}={checkpoint_path!r} shares no gate tensor (name and shape) with this gate")
        gate.load_state_dict(matching, strict=False)
        return sorted(matching)
    mismatched = _mismatched(source, target)
    if mismatched:
        raise ValueError(f"{option}={checkpoint_path!r} has a gate of another architecture (differing: {mismatched[:4]})")
    gate.load_state_dict(source)
    return sorted(source)
