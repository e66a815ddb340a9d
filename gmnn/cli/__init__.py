"""The ``gmnn`` command: a LightningCLI (``fit``, ``validate``, ``test``, ``predict``) and ``report``,
``analyze``, ``configs``.

- :mod:`gmnn.cli.app`: the LightningCLI, its defaults and argument links (:func:`make_cli`);
- :mod:`gmnn.cli.resume`: what ``--ckpt_path last`` means and the checks of a checkpoint against the config;
- :mod:`gmnn.cli.fragments`: composed configs (a protocol, then method fragments);
- :mod:`gmnn.cli.report` / :mod:`gmnn.cli.reference`: results tables of finished runs, beside the paper's;
- :mod:`gmnn.cli.analyze`: the routing report of a checkpoint;
- :mod:`gmnn.cli.namespace`: which Lightning namespace a command's classes need;
- :mod:`gmnn.cli.process` / :mod:`gmnn.cli.quiet`: process settings and third-party warning filters.

Importing this package is light: :func:`main` imports the rest, with the garbage collector paused
over those imports when it runs as the ``gmnn`` command.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: Names of :mod:`gmnn.cli.app` importable from here.
APP_NAMES = ("GMNNCLI", "TRAINER_DEFAULTS", "configs_dir", "fit_summary", "make_cli", "version")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``gmnn`` console script (``args``: the command line when ``None``).

    Chooses the Lightning namespace the command's classes need (:func:`gmnn.cli.namespace.choose_lightning`),
    then runs :func:`gmnn.cli.app.main`.
    """
    from gmnn.cli.namespace import choose_lightning
    from gmnn.cli.process import imports_without_collection

    choose_lightning(sys.argv[1:] if args is None else args)
    if args is None:
        with imports_without_collection():  # torch, Lightning, torchmetrics: see gmnn.cli.process
            app = importlib.import_module("gmnn.cli.app")
    else:
        app = importlib.import_module("gmnn.cli.app")
    app.main(args)


def __getattr__(name: str) -> Any:
    if name in APP_NAMES:
        return getattr(importlib.import_module("gmnn.cli.app"), name)
    raise AttributeError(f"module 'gmnn.cli' has no attribute {name!r}")
