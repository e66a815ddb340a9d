"""Loading a checkpoint into the variant that wrote it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import IO, Any

from gmnn.checkpoints.reading import read_checkpoint

CLASS_KEY = "gmnn_class_path"


def class_path_of(obj: object) -> str:
    """``module.Class`` of an object's class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def saved_class(checkpoint_path: str | Path | IO[bytes], option: str = "checkpoint") -> type | None:
    """The LightningModule class a gmnn checkpoint was written by, if it can be resolved.

    The file is read as tensors and plain values only, and only classes in ``gmnn`` or in
    modules that are already imported are resolved, so a checkpoint cannot make us run or
    import arbitrary code. ``option`` names the file in the errors.

    Raises:
        ValueError: The file cannot be read (:func:`~gmnn.checkpoints.reading.read_checkpoint`),
            or it names a class that cannot be found.
    """
    checkpoint = read_checkpoint(checkpoint_path, option)
    path = checkpoint.get(CLASS_KEY) or checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not path:
        return None
    module_name, _, name = path.rpartition(".")
    if module_name.split(".")[0] == "gmnn":
        module = importlib.import_module(module_name)
    else:
        module = sys.modules.get(module_name)
    found: Any = getattr(module, name, None) if module else None
    if not isinstance(found, type):
        raise ValueError(
            f"checkpoint {checkpoint_path} was written by {path}, which is not importable here; "
            "import the module that defines it before loading"
        )
    return found


def variant_of_checkpoint(cls: type, checkpoint_path: str | Path | IO[bytes]) -> type:
    """The class that wrote ``checkpoint_path`` (``cls`` when it is not recorded).

    A class whose own body sets ``loads_every_gmnn_checkpoint = True`` (:class:`~gmnn.models.base.MoEModule`,
    the entry point of every gmnn checkpoint) rebuilds whatever gmnn class wrote the file, e.g. a
    :class:`~gmnn.models.lm.MoETransformerLM`, which is a LightningModule but not a ``MoEModule``.

    Raises:
        ValueError: The checkpoint holds a class that is not ``cls`` or a subclass of it.
    """
    saved = saved_class(checkpoint_path)
    target = saved or cls
    if saved is not None and vars(cls).get("loads_every_gmnn_checkpoint", False):
        return target
    if not issubclass(target, cls):
        raise ValueError(
            f"checkpoint {checkpoint_path} holds a {target.__name__}, not a {cls.__name__}: "
            f"load it with {target.__name__}.load_from_checkpoint or MoEModule.load_from_checkpoint"
        )
    return target
