"""The Lightning namespace gmnn builds on: ``pytorch_lightning`` or ``lightning.pytorch``.

Lightning ships one code base under two names. Their classes are distinct: a
``lightning.pytorch.Trainer`` refuses a ``pytorch_lightning.LightningModule`` and the other way
round. gmnn takes every Lightning class from this module, which reads the package named by the
environment variable ``GMNN_LIGHTNING`` once, on first use:

- unset or ``pytorch_lightning``: ``pytorch_lightning`` (the default);
- ``lightning`` or ``lightning.pytorch``: ``lightning.pytorch``, for code written with
  ``import lightning as L`` (a ``L.Trainer`` then trains gmnn's models, ``gmnn fit`` takes
  ``lightning.pytorch`` data modules, callbacks and loggers).

Set it before gmnn's models are imported; the ``gmnn`` command sets it itself when a class named in
its configuration derives from ``lightning.pytorch`` (:func:`gmnn.cli.namespace.choose_lightning`).
A name is imported when it is first asked for, so ``import gmnn.pl`` costs nothing.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time the names come from the chosen package
    from pytorch_lightning import Callback, LightningDataModule, LightningModule, Trainer  # noqa: F401
    from pytorch_lightning.callbacks import (  # noqa: F401
        BaseFinetuning,
        BasePredictionWriter,
        LearningRateMonitor,
        ModelCheckpoint,
        ProgressBar,
        RichProgressBar,
        TQDMProgressBar,
    )
    from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback  # noqa: F401
    from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger  # noqa: F401
    from pytorch_lightning.strategies import DDPStrategy  # noqa: F401
    from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn  # noqa: F401

ENVIRONMENT_VARIABLE = "GMNN_LIGHTNING"

#: Accepted values of ``GMNN_LIGHTNING`` -> the package they name.
PACKAGES = {"pytorch_lightning": "pytorch_lightning", "lightning": "lightning.pytorch", "lightning.pytorch": "lightning.pytorch"}

#: Names gmnn uses -> the subpackage (of the chosen package) that holds them.
SUBPACKAGES = {
    "Callback": "", "LightningDataModule": "", "LightningModule": "", "Trainer": "", "seed_everything": "",
    "BaseFinetuning": "callbacks", "BasePredictionWriter": "callbacks", "LearningRateMonitor": "callbacks",
    "ModelCheckpoint": "callbacks", "ProgressBar": "callbacks", "RichProgressBar": "callbacks",
    "TQDMProgressBar": "callbacks",
    "LightningArgumentParser": "cli", "LightningCLI": "cli", "SaveConfigCallback": "cli",
    "CSVLogger": "loggers", "Logger": "loggers", "TensorBoardLogger": "loggers",
    "DDPStrategy": "strategies", "Strategy": "strategies",
    "UnrepeatedDistributedSampler": "overrides.distributed",
    "rank_zero_only": "utilities", "rank_zero_warn": "utilities", "_RICH_AVAILABLE": "utilities.imports",
}


def package_name() -> str:
    """The Lightning package ``GMNN_LIGHTNING`` names.

    Raises:
        ValueError: ``GMNN_LIGHTNING`` is set to something else than :data:`PACKAGES` allows.
    """
    value = os.environ.get(ENVIRONMENT_VARIABLE, "pytorch_lightning")
    if value not in PACKAGES:
        raise ValueError(f"{ENVIRONMENT_VARIABLE} must be one of {tuple(PACKAGES)}, got {value!r}")
    return PACKAGES[value]


def root() -> str:
    """The package gmnn's Lightning classes come from, fixed on first use."""
    if "NAME" not in globals():
        globals()["NAME"] = package_name()
    return globals()["NAME"]


def __getattr__(name: str) -> Any:
    """``gmnn.pl.X``: ``X`` of the chosen package (a class of :data:`SUBPACKAGES`, or any root attribute)."""
    if name.startswith("__") or name == "NAME":
        raise AttributeError(name)
    package, sub = root(), SUBPACKAGES.get(name)
    module = importlib.import_module(f"{package}.{sub}" if sub else package)
    if sub is None and not hasattr(module, name):  # a subpackage, e.g. gmnn.pl.callbacks
        value: Any = importlib.import_module(f"{package}.{name}")
    else:
        value = getattr(module, name)
    globals()[name] = value
    return value
