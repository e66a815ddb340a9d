"""Which Lightning namespace a command needs: ``lightning.pytorch`` when a class it names derives from it.

``gmnn fit --data my.DataModule`` with ``my.DataModule(lightning.pytorch.LightningDataModule)``
needs gmnn's models, callbacks and trainer from ``lightning.pytorch`` too (:mod:`gmnn.pl`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from gmnn import pl

#: A dotted class path: ``package.module.Class``.
CLASS_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+$")


def _values(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML document."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _values(value)
    elif isinstance(node, list):
        for value in node:
            yield from _values(value)
    elif isinstance(node, str):
        yield node


def class_paths(args: Sequence[str]) -> list[str]:
    """The dotted class paths named by ``args``: values of options and every string in ``--config`` files."""
    found: list[str] = []
    for index, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if index > 0 and args[index - 1] in ("--config", "-c") or arg.startswith("--config="):
            try:
                found += _values(yaml.safe_load(Path(value).read_text()))
            except (OSError, yaml.YAMLError):
                continue  # jsonargparse reports it
        else:
            found.append(value)
    return [value for value in found if CLASS_PATH.match(value) and value.rsplit(".", 1)[1][:1].isupper()]


def derives_from_lightning_pytorch(path: str) -> bool:
    """Whether the class at ``path`` derives from a ``lightning.pytorch`` class (``False`` when it cannot be imported).

    gmnn's own classes and ``pytorch_lightning``'s are not imported: they follow the namespace chosen.
    """
    if path.startswith("lightning.pytorch."):
        return True
    if path.startswith(("gmnn.", "pytorch_lightning.", "torch.")):
        return False
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except Exception:  # not importable here: jsonargparse reports it when it resolves the class
        return False
    return inspect.isclass(cls) and any(base.__module__.startswith("lightning.pytorch") for base in inspect.getmro(cls))


def choose_lightning(args: Sequence[str]) -> None:
    """Set ``GMNN_LIGHTNING=lightning`` when a class that ``args`` name derives from ``lightning.pytorch``.

    Nothing changes when ``GMNN_LIGHTNING`` is set already or gmnn's Lightning classes were imported.
    """
    if pl.ENVIRONMENT_VARIABLE in os.environ or "NAME" in vars(pl):
        return
    if any(derives_from_lightning_pytorch(path) for path in class_paths(args)):
        os.environ[pl.ENVIRONMENT_VARIABLE] = "lightning"
