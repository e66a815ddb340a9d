"""``--ckpt_path`` in the ``gmnn`` command: what ``last`` means, and whether a checkpoint fits the config."""

from __future__ import annotations

import csv
import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from gmnn.callbacks.run_folder import FOLDER_LOGGERS as FOLDER_LOGGER_CLASSES
from gmnn.checkpoints.compatibility import check_checkpoint_matches
from gmnn.checkpoints.reading import UnreadableCheckpoint, read_checkpoint
from gmnn.checkpoints.variants import CLASS_KEY
from gmnn.pl import rank_zero_only

LAST = "last.ckpt"
SPECIAL_PATHS = ("last", "best", "hpc", "registry")


def _get(namespace: Any, key: str, default: Any = None) -> Any:
    """``namespace.key`` for a jsonargparse Namespace or a dict (``default`` when missing)."""
    if namespace is None or isinstance(namespace, (bool, str)):
        return default
    getter = namespace.get if hasattr(namespace, "get") else lambda k, d: getattr(namespace, k, d)
    value = getter(key, default)
    return default if value is None else value


#: Class names of the loggers that write ``<save_dir>/<name>/version_N`` themselves (``name`` is the folder).
FOLDER_LOGGERS = tuple(logger.__name__ for logger in FOLDER_LOGGER_CLASSES)


def _logger_kind(logger: Any) -> str:
    """The class name of a logger entry of the config (``TensorBoardLogger``, ...; ``""`` when unknown)."""
    return str(_get(logger, "class_path", "")).rpartition(".")[2]


def run_root(config: Any) -> tuple[Path, str] | None:
    """Where earlier runs of ``config`` keep their checkpoints: a folder and the glob of the checkpoints under it.

    ``<save_dir>/<name>`` with ``*/checkpoints/*.ckpt`` for TensorBoard's and the CSV logger,
    ``<default_root_dir>/lightning_logs`` with Lightning's default logger; for any other logger
    (W&B, MLflow, your own) ``<save_dir>`` (else ``default_root_dir``) with
    ``*/*/checkpoints/*.ckpt``, since its folder name (a project, an experiment id) is the
    logger's to choose (:mod:`gmnn.callbacks.run_folder`). ``None`` when the logger is off.
    """
    trainer = _get(config, "trainer")
    logger = _get(trainer, "logger", True)
    default_root = Path(_get(trainer, "default_root_dir", "."))
    if logger is True:
        return default_root / "lightning_logs", "*/checkpoints/*.ckpt"
    if logger is False or isinstance(logger, (list, tuple)) and not logger:
        return None
    logger = logger[0] if isinstance(logger, (list, tuple)) else logger
    init_args = _get(logger, "init_args")
    save_dir = _get(init_args, "save_dir")
    if _logger_kind(logger) in FOLDER_LOGGERS:
        if save_dir is None:
            return None
        return Path(save_dir) / _get(init_args, "name", "lightning_logs"), "*/checkpoints/*.ckpt"
    return Path(save_dir) if save_dir is not None else default_root, "*/*/checkpoints/*.ckpt"


EXPERIMENT_KEYS = ("model", "data", "seed_everything", "optimizer", "lr_scheduler")


def experiment_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a run the same experiment: the model, the data, the seed and an injected optimizer or
    schedule (not the trainer, so that a resumed run may train for more epochs)."""
    return {key: config.get(key) for key in EXPERIMENT_KEYS}


def differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """The dotted keys where ``current`` differs from ``saved``, as ``key: saved -> current``."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        found = []
        for key in sorted(set(saved) | set(current), key=str):
            found += differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return found
    plain = [list(v) if isinstance(v, tuple) else v for v in (saved, current)]
    return [] if plain[0] == plain[1] else [f"{prefix.rstrip('.')}: {saved!r} -> {current!r}"]


def unreadable(path: Path) -> str | None:
    """Why ``path`` is not a loadable Lightning checkpoint (empty, truncated, not one, unsafe), else ``None``."""
    try:
        read_checkpoint(path, "--ckpt_path")
    except UnreadableCheckpoint as error:
        return error.reason
    return None


def _say(message: str) -> None:
    if rank_zero_only.rank == 0:
        print(f"gmnn: {message}", file=sys.stderr)


def newest_readable(folder: Path) -> Path | None:
    """``folder/last.ckpt`` if it loads, else the newest checkpoint there that does (one line per skipped file)."""
    last = folder / LAST
    others = sorted((p for p in folder.glob("*.ckpt") if p.name != LAST), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in ([last] if last.is_file() else []) + others:
        reason = unreadable(path)
        if reason is None:
            if path != last and last.is_file():
                _say(f"--ckpt_path last: {last} cannot be read, resuming from the newest readable checkpoint {path}")
            return path
        _say(f"--ckpt_path last: skipping {path}: {reason}")
    return None


def _saved_experiment(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    saved = yaml.safe_load(path.read_text())
    return experiment_of(saved) if isinstance(saved, Mapping) else None


def find_last_checkpoint(config: Any, experiment: Mapping[str, Any] | None = None) -> Path | None:
    """The newest readable checkpoint of an earlier run of the same experiment (``None`` if there is none).

    With ``last_checkpoint.dirpath`` set, that folder is the run's. Otherwise the
    runs under the logger's folder are tried newest first; a run whose saved
    ``config.yaml`` names another model, data or seed than ``experiment`` is
    another experiment and is left alone (one line says which setting differs).
    """
    dirpath = _get(_get(config, "last_checkpoint"), "dirpath")
    if dirpath is not None:
        return newest_readable(Path(dirpath)) if Path(dirpath).is_dir() else None
    where = run_root(config)
    if where is None or not where[0].is_dir():
        return None
    root, pattern = where
    runs = sorted((p.parent.parent for p in root.glob(pattern)), key=lambda r: _newest_mtime(r), reverse=True)
    for run_dir in dict.fromkeys(runs):  # newest first, each run once
        if experiment is not None:
            saved = _saved_experiment(run_dir)
            changed = ["no config.yaml to compare with"] if saved is None else differences(saved, experiment)
            if changed:
                _say(f"--ckpt_path last: {run_dir} is another experiment ({'; '.join(changed[:3])}), not resuming it")
                continue
        path = newest_readable(run_dir / "checkpoints")
        if path is not None:
            return path
    return None


def _newest_mtime(run_dir: Path) -> float:
    return max(p.stat().st_mtime for p in (run_dir / "checkpoints").glob("*.ckpt"))


def resolve_last(config: Any, resume_run: bool,
                 experiment: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None) -> Path | None:
    """Replace ``ckpt_path: last`` in ``config`` by the newest checkpoint of an earlier run of ``experiment``.

    Lightning resolves ``"last"`` only among the checkpoints of the current run,
    which is a fresh ``version_N`` folder. Here ``"last"`` means the newest
    readable ``last.ckpt`` (else the newest readable checkpoint) of an earlier
    run of the same experiment (:func:`find_last_checkpoint`). With
    ``resume_run`` (``fit``), the logger is pointed at that run's folder so that
    its curves and checkpoints continue there. When there is none, ``ckpt_path``
    is cleared and the run starts from scratch in a new folder, touching no
    other run (so a job script can always pass ``--ckpt_path last``). ``experiment`` may be a function that
    makes it, called only for ``"last"``.
    """
    if _get(config, "ckpt_path") != "last":
        return None
    path = find_last_checkpoint(config, experiment() if callable(experiment) else experiment)
    if path is None:
        if not resume_run:
            raise ValueError("--ckpt_path last: no readable checkpoint of an earlier run of this experiment (same "
                             "model, data and seed) under the logger's folder; pass the checkpoint's path")
        config.ckpt_path = None
        _say("--ckpt_path last: no earlier run of this experiment to resume, starting a new run")
        return None
    config.ckpt_path = str(path)
    init_args = _get(_get(_get(config, "trainer"), "logger"), "init_args")
    if resume_run and init_args is not None and "version" in init_args and init_args.get("version") is None:
        init_args["version"] = path.parent.parent.name
    return path


DERIVED_STAGES = ("validate", "test", "predict")


def log_into_checkpoint_run(config: Any, subcommand: str) -> Path | None:
    """Point a TensorBoard or CSV logger of ``validate`` / ``test`` / ``predict`` at the checkpoint's own run.

    A checkpoint at ``<save_dir>/<name>/<version>/checkpoints/x.ckpt`` of a gmnn run (its
    folder holds ``config.yaml``) gets its evaluation logged to ``<version>/<subcommand>/``,
    beside the training curves, instead of a new ``version_N`` folder; the run's own files
    are not touched. Returns that folder, or ``None`` when the logger or checkpoint does not fit.
    """
    ckpt_path = _get(config, "ckpt_path")
    if not ckpt_path or ckpt_path in SPECIAL_PATHS or not Path(ckpt_path).is_file():
        return None
    checkpoint = Path(ckpt_path).resolve()
    run = checkpoint.parent.parent
    logger = _get(_get(config, "trainer"), "logger")
    init_args = _get(logger, "init_args")
    if checkpoint.parent.name != "checkpoints" or not (run / "config.yaml").is_file() or init_args is None:
        return None
    if init_args.get("version") is not None:  # pinned by the user
        return None
    if "sub_dir" in init_args:  # TensorBoard's logger
        init_args["save_dir"], init_args["name"] = str(run.parent.parent), run.parent.name
        init_args["version"], init_args["sub_dir"] = run.name, subcommand
    elif _logger_kind(logger) == "CSVLogger":  # log_dir = <save_dir>/<name>/<version>
        init_args["save_dir"], init_args["name"] = str(run.parent.parent), f"{run.parent.name}/{run.name}"
        init_args["version"] = subcommand
        for key in ("checkpoint", "last_checkpoint"):  # still the run's checkpoints/, not <run>/<subcommand>/checkpoints
            if _get(config, key) is not None and _get(config[key], "dirpath") is None:
                config[key]["dirpath"] = str(run / "checkpoints")
    else:
        return None
    return run / subcommand


def check_readable(ckpt_path: Any) -> None:
    """Raise ``ValueError`` naming ``ckpt_path`` when it is a file that cannot be loaded as tensors and plain values."""
    if ckpt_path is None or ckpt_path in SPECIAL_PATHS or "://" in str(ckpt_path) or not Path(ckpt_path).is_file():
        return
    read_checkpoint(ckpt_path, "--ckpt_path")


def read_tensors_only(config: Any) -> None:
    """Leave Lightning's own load of ``ckpt_path`` at tensors and plain values (``--weights_only true``) unless
    ``--weights_only`` was set (gmnn's checks have refused a file that needs more before Lightning reads it)."""
    if _get(config, "ckpt_path") and "weights_only" in config and config.get("weights_only") is None:
        config["weights_only"] = True


def _model_options(args: Any) -> list[str]:
    """The model init arguments named on the command line ``args`` (``--model.init_args.k=2``, ``--model.k 2``)."""
    if not isinstance(args, (list, tuple)):
        return []
    names = []
    for token in args:
        if not isinstance(token, str) or not token.startswith("--model."):
            continue
        dotted = token[len("--model."):].partition("=")[0]
        dotted = dotted[len("init_args."):] if dotted.startswith("init_args.") else dotted
        name = dotted.partition(".")[0]
        if name and name not in ("class_path", "init_args", "dict_kwargs", "help") and name not in names:
            names.append(name)
    return names


def _plain_value(value: Any) -> Any:
    """``value`` with tuples as lists and namespaces as dicts, as a checkpoint's hyper-parameters hold it."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {key: _plain_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_value(item) for item in value]
    return value


def warn_ignored_model_options(config: Any, args: Any) -> None:
    """One line naming the model options of ``args`` that the checkpoint's hyper-parameters replace.

    With a ``ckpt_path`` file Lightning's CLI rebuilds the model from the checkpoint's hyper-parameters,
    so a model option given on the command line with another value than the checkpoint's is not used.
    """
    ckpt_path = _get(config, "ckpt_path")
    if not ckpt_path or ckpt_path in SPECIAL_PATHS or not Path(ckpt_path).is_file():
        return
    given = _model_options(args)
    if not given:
        return
    saved = read_checkpoint(ckpt_path, "--ckpt_path").get("hyper_parameters", {})
    current = _get(_get(config, "model"), "init_args")
    ignored = [
        f"--model.init_args.{name}={_shown(_get(current, name))} (the checkpoint's: {_shown(saved[name])})"
        for name in given
        if name in saved and _plain_value(_get(current, name)) != _plain_value(saved[name])
    ]
    if ignored:
        _say(f"warning: --ckpt_path {ckpt_path}: the model comes from the checkpoint, ignoring {'; '.join(ignored)}")


def _shown(value: Any) -> str:
    """``value`` as it would be typed on the command line."""
    plain = _plain_value(value)
    return plain if isinstance(plain, str) else str(plain)


def check_ckpt_path(model: torch.nn.Module, ckpt_path: str | None) -> None:
    """Raise ``ValueError`` before Lightning starts when ``ckpt_path`` is missing or does not fit ``model``."""
    if ckpt_path is None or ckpt_path in SPECIAL_PATHS or "://" in str(ckpt_path):
        return
    if not Path(ckpt_path).is_file():
        raise ValueError(f"--ckpt_path {ckpt_path} does not exist")
    checkpoint = read_checkpoint(ckpt_path, "--ckpt_path")
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
    checkpoint = read_checkpoint(ckpt_path, "--ckpt_path")
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


def keep_csv_metrics(trainer: Any) -> None:
    """Resuming into a CSV logger's run: keep the run's ``metrics.csv``.

    Lightning's CSV writer deletes a ``metrics.csv`` it finds when it opens the
    folder (with a warning), so a resumed run would lose the curves of its
    earlier epochs. The old rows are read first and handed to the writer, which
    writes them back with the new ones. Call it before anything logs.
    """
    from gmnn.pl import CSVLogger

    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or logger._experiment is not None:
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows, keys = list(reader), list(reader.fieldnames or [])
        with warnings.catch_warnings():  # "... will be deleted": we hold its rows
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            experiment = logger.experiment
        experiment.metrics_keys = sorted(keys)
        experiment.metrics = [{key: value for key, value in row.items() if value != ""} for row in rows]
