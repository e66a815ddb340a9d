"""Composed configs: a protocol (``configs/<dataset>/protocol.yaml``) first, then method fragments
(``configs/methods/*.yaml``), which only make sense after it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ORDER = "--config configs/<dataset>/protocol.yaml --config configs/methods/<method>.yaml"


def config_paths(args: Sequence[str]) -> list[Path]:
    """The files of every ``--config``/``-c`` in ``args`` (``--config F``, ``--config=F``, ``-c F``), in order."""
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(Path(args[i + 1]))
        elif arg.startswith("--config="):
            paths.append(Path(arg.split("=", 1)[1]))
    return paths


def _loaded(path: Path) -> Mapping[str, Any] | None:
    """The top-level mapping of a config file; ``None`` when it is unreadable or not a YAML mapping."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, Mapping) else None


def _class_of(section: Any) -> str | None:
    """The class a ``model``/``data`` section names (``Class`` or ``{class_path: Class}``), else ``None``."""
    if isinstance(section, str):
        return section
    if isinstance(section, Mapping) and isinstance(section.get("class_path"), str):
        return section["class_path"]
    return None


def _same_class(first: str, second: str) -> bool:
    """Whether two class names name one class (``DenseMoE`` and ``gmnn.models.DenseMoE`` do)."""
    return first.rpartition(".")[2] == second.rpartition(".")[2]


def _gives_data(args: Sequence[str]) -> bool:
    """Whether the command line sets the data module itself (``--data ...``, ``--data=...``, ``--data.*``)."""
    return any(arg == "--data" or arg.startswith(("--data.", "--data=")) for arg in args)


def check_not_fragments_alone(args: Sequence[str]) -> None:
    """Refuse a command whose ``--config`` files are only method fragments (no ``data``, no protocol).

    Without a protocol, jsonargparse would only say that ``fit.data`` is required.

    Raises:
        ValueError: no ``--config`` names a data module (``data.class_path``) and no ``--data`` argument is given.
    """
    paths = config_paths(args)
    if not paths or _gives_data(args):
        return
    loaded = [_loaded(path) for path in paths]
    if all(config is not None and _class_of(config.get("data")) is None for config in loaded):
        names = ", ".join(str(p) for p in paths)
        raise ValueError(
            f"--config {names}: no data module in any config; a method fragment (configs/methods/*.yaml) needs a "
            "protocol first: --config configs/<toy|mnist|fmnist|fmnist_mnist|cifar10>/protocol.yaml --config FRAGMENT"
        )


def check_config_order(args: Sequence[str]) -> None:
    """Refuse ``--config`` files composed in a way whose merge would silently drop what one of them asks for.

    A command composes at most one config naming a data module (a protocol, or a complete config such as
    ``configs/toy/dense.yaml``), given first, and after it fragments (configs naming no data module). A later
    fragment may change the options of an earlier fragment's model, not replace its model class. Files that
    cannot be read as a YAML mapping are left to jsonargparse, which reports them.

    Raises:
        ValueError: two configs name a data module, a fragment comes before the config naming the data module,
            or a later config names another model class than an earlier fragment; one line with the order to use.
    """
    paths = config_paths(args)
    loaded = [_loaded(path) for path in paths]
    if len(paths) < 2 or any(config is None for config in loaded):
        return
    with_data = [path for path, config in zip(paths, loaded) if _class_of(config.get("data")) is not None]
    if len(with_data) > 1:
        raise ValueError(
            f"--config {', '.join(map(str, with_data))}: more than one config names a data module (data.class_path), "
            f"and the last would replace the others' data and protocol; compose one protocol with methods: {ORDER}"
        )
    if with_data and paths[0] != with_data[0]:
        before = paths[: paths.index(with_data[0])]
        raise ValueError(
            f"--config {', '.join(map(str, before))} comes before {with_data[0]}, which names the data module and "
            f"would replace its settings; put the protocol first: {ORDER}"
        )
    _check_model_kept(paths, loaded)


def _check_model_kept(paths: Sequence[Path], loaded: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a config naming another model class than an earlier fragment's (the fragment's method would be lost)."""
    earlier: tuple[Path, str] | None = None
    for path, config in zip(paths, loaded):
        model = _class_of(config.get("model"))
        if model is None:
            continue
        if earlier is not None and not _same_class(earlier[1], model):
            raise ValueError(
                f"--config {path} replaces the model {earlier[1]} of {earlier[0]} with {model}, which drops that "
                f"method; give one method fragment per run: {ORDER}"
            )
        if _class_of(config.get("data")) is None:
            earlier = (path, model)
