"""Modules that moved, still importable by their old names.

A config's ``class_path``, a checkpoint's saved class or a user's import may name a module where it
used to be; :data:`MOVED` maps each old name to its home, and :class:`MovedModuleFinder` makes the old
name import the same module object (so ``isinstance`` and patching see one class). Only names listed
here are touched.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

#: Old module name -> the module's home.
MOVED: dict[str, str] = {
    "gmnn.nn.combine": "gmnn.nn.functional.combine",
    "gmnn.nn.routing": "gmnn.nn.functional.routing",
    "gmnn.nn.losses": "gmnn.nn.functional.losses",
    "gmnn.nn.regularizers": "gmnn.nn.functional.regularizers",
    "gmnn.nn.temperature": "gmnn.nn.functional.temperature",
    "gmnn.nn.dispatch": "gmnn.nn.functional.dispatch",
    "gmnn.nn.grouped": "gmnn.nn.functional.grouped",
    "gmnn.nn.conv_pool": "gmnn.nn.functional.conv_pool",
    "gmnn.nn.networks": "gmnn.nn.mixture.networks",
    "gmnn.nn.custom": "gmnn.nn.mixture.custom",
    "gmnn.nn.experts": "gmnn.nn.mixture.experts",
    "gmnn.nn.stacked": "gmnn.nn.mixture.stacked",
    "gmnn.nn.gates": "gmnn.nn.mixture.gates",
    "gmnn.nn.output": "gmnn.nn.mixture.output",
    "gmnn.nn.moe_layer": "gmnn.nn.moe.layer",
    "gmnn.nn.routers": "gmnn.nn.moe.routers",
    "gmnn.nn.moe_experts": "gmnn.nn.moe.experts",
    "gmnn.nn.routing_record": "gmnn.nn.moe.record",
    "gmnn.nn.hf": "gmnn.nn.moe.hf",
    "gmnn.nn.expert_parallel": "gmnn.nn.moe.parallel",
    "gmnn.callbacks.revival": "gmnn.models.revival",
    "gmnn.checkpoints.resume": "gmnn.cli.resume",
    "gmnn.fragments": "gmnn.cli.fragments",
    "gmnn.report": "gmnn.cli.report",
    "gmnn.reference": "gmnn.cli.reference",
    "gmnn.process": "gmnn.cli.process",
    "gmnn.quiet": "gmnn.cli.quiet",
    "gmnn.run_folder": "gmnn.callbacks.run_folder",
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the already imported module of its new name."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module was executed under its new name."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`MOVED` under their old names."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new_name))


def install() -> None:
    """Put :class:`MovedModuleFinder` on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
