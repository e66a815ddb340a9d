"""Does a checkpoint fit a model: same variant, same architecture; and the random states a checkpoint carries."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gmnn.checkpoints.reading import read_checkpoint
from gmnn.checkpoints.variants import CLASS_KEY

RNG_KEY = "gmnn_rng_states"


def _shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, Tensor)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def check_checkpoint_matches(model: torch.nn.Module, checkpoint: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Raise ``ValueError`` when ``checkpoint`` was written by another variant or another architecture.

    Args:
        model: The module the checkpoint is about to be loaded into.
        checkpoint: The loaded checkpoint dictionary.
        source: How to name the checkpoint in the message (e.g. its path).
    """
    own = f"{type(model).__module__}.{type(model).__qualname__}"
    saved = checkpoint.get(CLASS_KEY)
    if saved and saved != own:
        raise ValueError(
            f"{source} holds a {saved.rpartition('.')[2]} ({saved}), but the model is a {type(model).__name__}: "
            f"use --model={saved} (or {saved.rpartition('.')[2]}.load_from_checkpoint / MoEModule.load_from_checkpoint)"
        )
    state = checkpoint.get("state_dict")
    if state is None:
        return
    theirs, ours = _shapes(state), _shapes(model.state_dict())
    if theirs == ours:
        return
    saved_hp = checkpoint.get("hyper_parameters", {})
    hparams = getattr(model, "hparams", {})
    differences = [
        f"{name}={_plain(saved_hp[name])!r} in the checkpoint but {_plain(hparams[name])!r} in the model"
        for name in hparams
        if name in saved_hp and _plain(saved_hp[name]) != _plain(hparams[name])
    ]
    if not differences:
        changed = sorted(set(theirs) ^ set(ours) | {k for k in theirs.keys() & ours.keys() if theirs[k] != ours[k]})
        differences = [f"parameters that differ: {', '.join(changed[:5])}"]
    raise ValueError(
        f"{source} does not fit this {type(model).__name__}: {'; '.join(differences)}. "
        "Build the model with the checkpoint's settings (e.g. its saved config.yaml)."
    )


def explain_overrides(error: ValueError, checkpoint_path: Any, overrides: Mapping[str, Any]) -> ValueError:
    """``error`` restated with the ``load_from_checkpoint`` keyword arguments that differ from the checkpoint."""
    if not overrides or "does not fit" not in str(error) or hasattr(checkpoint_path, "read"):
        return error
    saved = read_checkpoint(checkpoint_path).get("hyper_parameters", {})
    changed = [
        f"{name}={_plain(saved[name])!r} in the checkpoint but {name}={_plain(value)!r} was passed to load_from_checkpoint"
        for name, value in overrides.items()
        if name in saved and _plain(saved[name]) != _plain(value)
    ]
    if not changed:
        return error
    return ValueError(f"checkpoint {checkpoint_path} does not fit: {'; '.join(changed)}")


def rng_states() -> dict[str, Any]:
    """The global random states (torch, CUDA, NumPy, Python) to store in a checkpoint."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)]
    # tensors and plain Python values only, so that torch.load(weights_only=True) accepts the checkpoint
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore the states of :func:`rng_states` (CUDA only when present on both sides)."""
    torch.set_rng_state(states["torch"].cpu())
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
