"""Method fragments (``configs/methods/*.yaml``): configs that only make sense after a protocol."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml


def config_paths(args: Sequence[str]) -> list[Path]:
    """The files of every ``--config``/``-c`` in ``args`` (``--config F``, ``--config=F``, ``-c F``), in order."""
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            paths.append(Path(arg.split("=", 1)[1]))
    return paths


def _names_a_data_module(path: Path) -> bool:
    """Whether ``path`` has a ``data`` section with its class (a fragment may only set ``data.init_args``)."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return True  # unreadable or not YAML: jsonargparse reports it
    if not isinstance(loaded, dict):
        return True
    data = loaded.get("data")
    return isinstance(data, str) or (isinstance(data, dict) and "class_path" in data)


def check_not_fragments_alone(args: Sequence[str]) -> None:
    """Refuse a command whose ``--config`` files are only method fragments (no ``data``, no protocol).

    A fragment says what a method changes (its model class and options) and needs a protocol before it,
    ``--config configs/<dataset>/protocol.yaml --config configs/methods/<method>.yaml``. Without one,
    jsonargparse would only say that ``fit.data`` is required.

    Raises:
        ValueError: no ``--config`` names a data module (``data.class_path``) and no ``--data`` argument is given.
    """
    paths = config_paths(args)
    if not paths or any(arg == "--data" or arg.startswith("--data.") or arg.startswith("--data=") for arg in args):
        return
    if not any(_names_a_data_module(path) for path in paths):
        names = ", ".join(str(p) for p in paths)
        raise ValueError(
            f"--config {names}: no data module in any config; a method fragment (configs/methods/*.yaml) needs a "
            "protocol first: --config configs/<toy|mnist|fmnist|fmnist_mnist|cifar10>/protocol.yaml --config FRAGMENT"
        )
