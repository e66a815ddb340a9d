"""Reading a checkpoint file: tensors and plain Python values only, never code.

Every checkpoint gmnn opens itself goes through :func:`read_checkpoint` (``torch.load`` with
``weights_only=True``), so a file carrying pickled objects is refused before anything in it runs.
gmnn writes only tensors and plain values (numbers, strings, lists, dicts), so its own
checkpoints need no safe globals. A file that cannot be read, or holds anything else, stops with
one line naming the option that gave it and the file.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch

_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(.+?)\s*$", re.MULTILINE)


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that cannot be loaded; ``reason`` says why, the message names the option and the file."""

    def __init__(self, option: str, path: object, reason: str) -> None:
        super().__init__(f"{option} {path} cannot be read: {reason}")
        self.reason = reason


def _first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 120 characters of it)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:120] if lines else ''}"


def _load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file: code or objects in it, else damage."""
    message = str(error)
    unsafe = _UNSAFE_GLOBAL.search(message)
    if unsafe:
        return (f"it holds pickled objects ({unsafe.group(1)}), not only tensors and plain values, "
                "and gmnn never runs code from a checkpoint")
    if isinstance(error, (PermissionError, IsADirectoryError)):
        return f"it cannot be opened ({_first_line(error)})"
    detail = _UNPICKLER_ERROR.search(message) if isinstance(error, pickle.UnpicklingError) else None
    shown = f"{type(error).__name__}: {detail.group(1)[:120]}" if detail else _first_line(error)
    return f"it is truncated or not a checkpoint ({shown})"


def _damage(path: Path) -> str | None:
    """Why a file on disk is not worth loading at all (empty, an incomplete zip archive), else ``None``."""
    if path.stat().st_size == 0:
        return "it is empty (0 bytes)"
    with path.open("rb") as handle:
        if handle.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(handle):
            return "it is truncated or not a checkpoint (an incomplete zip archive)"
    return None


def _load(source: str | Path | IO[bytes], map_location: Any) -> Any:
    """``torch.load`` of tensors and plain values; a file on disk in the zip format is memory-mapped, not read whole."""
    if hasattr(source, "read"):
        try:
            return torch.load(source, map_location=map_location, weights_only=True)
        finally:
            source.seek(0)  # type: ignore[union-attr]
    return torch.load(source, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(source))


def read_checkpoint(source: str | Path | IO[bytes], option: str = "checkpoint", map_location: Any = "cpu") -> dict[str, Any]:
    """The contents of a Lightning checkpoint, read as tensors and plain values only.

    Args:
        source: A checkpoint path, or an open binary file (read from its start, then rewound).
        option: How the user gave the file (``--ckpt_path``, ``init_experts_from``, ...), named in the error.
        map_location: Passed to ``torch.load``.

    Raises:
        UnreadableCheckpoint: (a ``ValueError``) the file is empty, truncated, not a checkpoint,
            holds no ``state_dict``, or holds anything but tensors and plain values.
    """
    on_disk = not hasattr(source, "read")
    name = source if on_disk else getattr(source, "name", "the file object")
    try:
        damage = _damage(Path(source)) if on_disk else None  # type: ignore[arg-type]
        checkpoint = None if damage else _load(source, map_location)
    except Exception as error:  # any failure to load means the file cannot be used
        damage = _load_failure(error)
    if damage:
        raise UnreadableCheckpoint(option, name, damage)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise UnreadableCheckpoint(option, name, "it holds no state_dict (not a Lightning checkpoint)")
    return dict(checkpoint)
