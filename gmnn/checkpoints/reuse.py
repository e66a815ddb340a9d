"""Reusing the experts of a trained checkpoint in a new model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PREFIX = "experts."


def load_experts(experts: nn.Module, checkpoint_path: str) -> None:
    """Copy the expert weights of a gmnn checkpoint (any variant) into ``experts``.

    Raises:
        ValueError: The file is missing or holds no experts, or its experts
            differ from ``experts`` in number or architecture (parameter names or shapes).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"init_experts_from must be an existing checkpoint file, got {checkpoint_path!r}")
    state = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
    source = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    target = experts.state_dict()
    if not source:
        raise ValueError(f"init_experts_from={checkpoint_path!r} holds no expert weights (no '{PREFIX}*' keys)")
    mismatched = sorted(set(source) ^ set(target)) + sorted(
        k for k in set(source) & set(target) if source[k].shape != target[k].shape
    )
    if mismatched:
        theirs = len({k.split(".")[1] for k in source})
        ours = len({k.split(".")[1] for k in target})
        raise ValueError(
            f"init_experts_from={checkpoint_path!r} has experts of another count or architecture "
            f"({theirs} experts there, {ours} here; differing parameters: {mismatched[:4]})"
        )
    experts.load_state_dict(source)


GATE_PREFIX = "gate."


def load_gate(gate: nn.Module, checkpoint_path: str, strict: bool = True) -> list[str]:
    """Copy the gate weights of a gmnn checkpoint (a gated variant) into ``gate``; the names copied.

    With ``strict=False`` only the tensors whose names and shapes match are copied
    (the reference's ``load_state_dict(old_gate.state_dict(), strict=False)``: e.g. the
    shared layers of an attention gate into a plain gate, whose output layer stays new).

    Raises:
        ValueError: The file is missing or holds no gate, or its gate differs from ``gate``
            in architecture (parameter names or shapes; with ``strict=False``: nothing matches).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"gate_from must be an existing checkpoint file, got {checkpoint_path!r}")
    state = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
    source = {k[len(GATE_PREFIX):]: v for k, v in state.items() if k.startswith(GATE_PREFIX)}
    if not source:
        raise ValueError(f"gate_from={checkpoint_path!r} holds no gate weights (no '{GATE_PREFIX}*' keys)")
    target = gate.state_dict()
    mismatched = sorted(set(source) ^ set(target)) + sorted(
        k for k in set(source) & set(target) if source[k].shape != target[k].shape
    )
    if not strict:
        matching = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
        if not matching:
            raise ValueError(f"gate_from={checkpoint_path!r} shares no gate tensor (name and shape) with this gate")
        gate.load_state_dict(matching, strict=False)
        return sorted(matching)
    if mismatched:
        raise ValueError(f"gate_from={checkpoint_path!r} has a gate of another architecture (differing: {mismatched[:4]})")
    gate.load_state_dict(source)
    return sorted(source)
