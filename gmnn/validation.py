"""Argument checks shared by blocks and modules: clear ``ValueError`` messages."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def check_positive_int(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_non_negative(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number >= 0."""
    if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


def check_shape(name: str, tensor: Tensor, shape: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``tensor`` has ``shape`` (-1 matches any size)."""
    ok = tensor.dim() == len(shape) and all(s == -1 or s == t for s, t in zip(shape, tensor.shape))
    if not ok:
        expected = ["*" if s == -1 else s for s in shape]
        raise ValueError(f"{name} must have shape {expected}, got {list(tensor.shape)}")
