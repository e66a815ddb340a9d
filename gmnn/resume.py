"""``--ckpt_path`` in the ``gmnn`` command: what ``last`` means, and whether a checkpoint fits the config."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from gmnn.models.checks import check_checkpoint_matches
from gmnn.models.loading import CLASS_KEY

LAST = "last.ckpt"
SPECIAL_PATHS = ("last", "best", "hpc", "registry")


def _get(namespace: Any, key: str, default: Any = None) -> Any:
    """``namespace.key`` for a jsonargparse Namespace or a dict (``default`` when missing)."""
    if namespace is None or isinstance(namespace, (bool, str)):
        return default
    getter = namespace.get if hasattr(namespace, "get") else lambda k, d: getattr(namespace, k, d)
    value = getter(key, default)
    return default if value is None else value


def run_root(config: Any) -> Path | None:
    """The folder whose ``<version>/checkpoints/last.ckpt`` files belong to runs of ``config``.

    ``<save_dir>/<name>`` of a TensorBoard/CSV logger, ``<default_root_dir>/lightning_logs``
    with Lightning's default logger, ``None`` when the logger is off or unknown.
    """
    trainer = _get(config, "trainer")
    logger = _get(trainer, "logger", True)
    if logger is True:
        return Path(_get(trainer, "default_root_dir", ".")) / "lightning_logs"
    init_args = _get(logger, "init_args")
    save_dir = _get(init_args, "save_dir")
    if save_dir is None:
        return None
    return Path(save_dir) / _get(init_args, "name", "lightning_logs")


def find_last_checkpoint(config: Any) -> Path | None:
    """The newest ``last.ckpt`` of earlier runs of ``config`` (``None`` if there is none)."""
    dirpath = _get(_get(config, "last_checkpoint"), "dirpath")
    if dirpath is not None:
        path = Path(dirpath) / LAST
        return path if path.is_file() else None
    root = run_root(config)
    if root is None or not root.is_dir():
        return None
    candidates = [path for path in root.glob(f"*/checkpoints/{LAST}") if path.is_file()]
    return max(candidates, key=lambda path: path.stat().st_mtime, default=None)


def resolve_last(config: Any, resume_run: bool) -> Path | None:
    """Replace ``ckpt_path: last`` in ``config`` by the newest ``last.ckpt`` of an earlier run.

    Lightning resolves ``"last"`` only among the checkpoints of the current run,
    which is a fresh ``version_N`` folder, so it would silently start from
    scratch. With ``resume_run`` (``fit``), the logger is pointed at the resumed
    run's folder so that its TensorBoard curves and checkpoints continue there.
    When no earlier run exists ``"last"`` is left for Lightning, which warns and
    starts from scratch (so a job script can always pass ``--ckpt_path last``).
    """
    if _get(config, "ckpt_path") != "last":
        return None
    path = find_last_checkpoint(config)
    if path is None:
        return None
    config.ckpt_path = str(path)
    init_args = _get(_get(_get(config, "trainer"), "logger"), "init_args")
    if resume_run and init_args is not None and "version" in init_args and init_args.get("version") is None:
        init_args["version"] = path.parent.parent.name
    return path


def check_ckpt_path(model: torch.nn.Module, ckpt_path: str | None) -> None:
    """Raise ``ValueError`` before Lightning starts when ``ckpt_path`` is missing or does not fit ``model``."""
    if ckpt_path is None or ckpt_path in SPECIAL_PATHS or "://" in str(ckpt_path):
        return
    if not Path(ckpt_path).is_file():
        raise ValueError(f"--ckpt_path {ckpt_path} does not exist")
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    check_checkpoint_matches(model, checkpoint, f"--ckpt_path {ckpt_path}")


def _full_class_path(class_path: str) -> str:
    """``module.Class`` where the class is defined (``gmnn.models.DenseMoE`` -> ``gmnn.models.dense.DenseMoE``)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return class_path
    return f"{found.__module__}.{found.__qualname__}"


def check_config_fits_checkpoint(config: Any) -> None:
    """Raise ``ValueError`` when the config asks for another variant or expert count than ``ckpt_path`` holds.

    Lightning's CLI rebuilds the model from the checkpoint's hyperparameters
    (so ``k``, ``temperature``, hidden sizes, ... come from the checkpoint);
    the variant and the number of experts are what a checkpoint *is*, so a
    config that names others is refused rather than silently overridden.
    """
    ckpt_path = _get(config, "ckpt_path")
    model = _get(config, "model")
    if not ckpt_path or not Path(ckpt_path).is_file() or _get(model, "class_path") is None:
        return
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    hparams = checkpoint.get("hyper_parameters", {})
    saved = checkpoint.get(CLASS_KEY) or hparams.get("_class_path")
    wanted = _full_class_path(_get(model, "class_path"))
    saved_experts, wanted_experts = hparams.get("num_experts"), _get(_get(model, "init_args"), "num_experts")
    if (saved is None or _full_class_path(saved) == wanted) and saved_experts == wanted_experts:
        return
    saved_config = Path(ckpt_path).parent.parent / "config.yaml"
    hint = f"--config {saved_config}" if saved_config.is_file() else "the config of the run that wrote it"
    raise ValueError(
        f"--ckpt_path {ckpt_path} holds a {str(saved).rpartition('.')[2]} with num_experts={saved_experts}, "
        f"but the config asks for a {wanted.rpartition('.')[2]} with num_experts={wanted_experts}; use {hint}"
    )
