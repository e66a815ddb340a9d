"""The ``gmnn`` command: LightningCLI with gmnn's defaults and argument links."""

from __future__ import annotations

import atexit
import contextlib
import errno
import importlib.metadata
import inspect
import os
import sys
import sysconfig
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import yaml

from gmnn._deferred import install as defer_unused_imports
from gmnn.cli.process import freeze_garbage_collector, imports_without_collection, tune_malloc

# the command (not ``import gmnn``) loads torchmetrics' unused metric domains only when asked (gmnn._deferred)
defer_unused_imports()
with imports_without_collection():  # Lightning, torchmetrics, torch: about half a million objects (gmnn.cli.process)
    from gmnn import pl
    from gmnn.callbacks.checkpoint import AtomicModelCheckpoint, LastCheckpoint
    from gmnn.callbacks.figures import DecompositionFigures
    from gmnn.callbacks.predictions import PredictionWriter
    from gmnn.callbacks.progress import default_progress_bar, needs_default_progress_bar
    from gmnn.callbacks.run_config import RunConfig
    from gmnn.callbacks.run_folder import run_folder
    from gmnn.cli.fragments import check_config_order, check_not_fragments_alone
    from gmnn.cli.logging_speed import install as install_log_fast_path
    from gmnn.cli.quiet import silence_known_warnings
    from gmnn.cli.resume import (
        check_ckpt_path,
        check_config_fits_checkpoint,
        check_readable,
        experiment_of,
        keep_csv_metrics,
        log_into_checkpoint_run,
        read_tensors_only,
        resolve_last,
        warn_ignored_model_options,
    )
    from gmnn.pl import (
        Callback,
        LearningRateMonitor,
        LightningArgumentParser,
        LightningCLI,
        LightningDataModule,
        LightningModule,
        TensorBoardLogger,
        Trainer,
    )

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": f"{pl.root()}.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "gmnn"},
    },
    "enable_progress_bar": True,
}


class GMNNCLI(LightningCLI):
    """LightningCLI that links data sizes (input shape, classes) into the model.

    Adds two checkpoint callbacks: ``checkpoint`` keeps the best model by
    ``val/loss`` (``best-epoch=N.ckpt``), ``last_checkpoint`` keeps
    ``last.ckpt`` as the newest state for resuming. ``figures`` writes the
    decomposition figures to TensorBoard (``--figures.every_n_epochs=0``: only after testing).
    ``--ckpt_path last`` means the newest ``last.ckpt`` of earlier runs, and
    ``fit`` then continues in that run's folder. A ``--ckpt_path`` of another
    variant or architecture is refused before Lightning starts. The progress bar
    is Lightning's, redrawn 5 times a second (:mod:`gmnn.callbacks.progress`).
    """

    def __init__(self, *positional: Any, **keywords: Any) -> None:
        args = inspect.signature(LightningCLI.__init__).bind(self, *positional, **keywords).arguments.get("args")
        self._requested = requested_subcommand(sys.argv[1:] if args is None else args)
        super().__init__(*positional, **keywords)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """Lightning's subcommands; only the one asked for when the arguments start with it.

        Each subcommand's parser holds every trainer, model and data option, so building the other three
        is most of the parser's cost for nothing: ``gmnn fit ...`` parses exactly as with all four. Any other
        start (``--help``, ``-c FILE fit``, an unknown name) gets all four, for the listing or the error.
        """
        every = LightningCLI.subcommands()
        return {self._requested: every[self._requested]} if self._requested in every else every

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's parsing; the arguments are kept to name the model options a checkpoint replaces."""
        self._args = sys.argv[1:] if args is None else args
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        # runs before Lightning loads the checkpoint's hyperparameters into the model config
        subcommand = self.config.get("subcommand")
        if subcommand:
            config = self.config[subcommand]
            # the experiment is a dump of the config: resolve_last makes it only for --ckpt_path last
            resolve_last(config, resume_run=subcommand == "fit", experiment=lambda: self._experiment(subcommand))
            check_readable(config.get("ckpt_path"))
            check_config_fits_checkpoint(config)
            warn_ignored_model_options(config, getattr(self, "_args", None))
            read_tensors_only(config)
            if subcommand != "fit":
                log_into_checkpoint_run(config, subcommand)
        super()._parse_ckpt_path()

    def _experiment(self, subcommand: str) -> dict[str, Any]:
        """The model, data and seed of the parsed config, as its ``config.yaml`` would record them."""
        dumped = self._parser(subcommand).dump(self.config[subcommand], skip_unset=False, skip_validation=True)
        return experiment_of(yaml.safe_load(dumped))

    def _dump_config(self) -> None:
        """Lightning's copy of the config for the models' hyperparameters, dumped without validating the config
        a second time: parsing did, and the values gmnn sets after that (:mod:`gmnn.cli.resume`: checkpoint paths
        and folders, the logger's ``version``, ``weights_only``) have the types of their options."""
        if hasattr(self, "config_dump"):
            return
        dumped = self.parser.dump(self.config, format="yaml", skip_link_targets=False, skip_unset=False,
                                  skip_validation=True)
        self.config_dump = yaml.safe_load(dumped)
        if "subcommand" in self.config:
            self.config_dump = self.config_dump[self.config.subcommand]

    def _check_ckpt_path(self) -> None:
        check_ckpt_path(self.model, self.config_init[self.subcommand].get("ckpt_path"))  # e.g. num_classes from the data

    before_validate = before_test = before_predict = _check_ckpt_path

    def before_fit(self) -> None:
        self._check_ckpt_path()
        if self.config_init[self.subcommand].get("ckpt_path"):  # resuming, into the run's own folder
            keep_csv_metrics(self.trainer)
            # Lightning's note on a non-empty checkpoint folder: here it is the resumed run's own folder
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        schedule = self.model.hparams.get("scheduler", "none") != "none" or bool(self._get(self.config_init, "lr_scheduler"))
        monitored = any(isinstance(c, LearningRateMonitor) for c in self.trainer.callbacks)
        if schedule and self.trainer.loggers and not monitored:
            self.trainer.callbacks.append(LearningRateMonitor(logging_interval="step"))

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """``--optimizer`` / ``--lr_scheduler`` replace gmnn's fused Adam and schedules (no warning: that is asked for)."""
        passed = subcommand is not None and self._get(self.config_init, "optimizer") is not None
        if passed and not self.model.automatic_optimization:
            raise ValueError(
                f"--optimizer: {type(self.model).__name__} steps its own optimizers (manual optimization); "
                "set its learning rates with its model options instead"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden by")
            super()._add_configure_optimizers_method_to_model(subcommand)

    def after_fit(self) -> None:
        """Say where the run went: its folder, best and last checkpoints, final validation metrics."""
        log_dir = run_folder(self.trainer)  # a broadcast: every process takes part
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, log_dir), file=sys.stderr)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        """Lightning's trainer, with gmnn's default progress bar (:mod:`gmnn.callbacks.progress`) unless one was given."""
        if needs_default_progress_bar(config, callbacks):
            callbacks = [*callbacks, default_progress_bar()]
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(AtomicModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": False,
                "checkpoint.filename": "best-{epoch}",
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(DecompositionFigures, "figures")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


EPILOG = (
    "other commands: gmnn report RUN_DIRS... (results table of finished runs), "
    "gmnn analyze --ckpt_path CKPT | --hf_model DIR (routing report), gmnn configs (folder of the shipped configs), gmnn --version"
)


def requested_subcommand(args: Any) -> str | None:
    """The subcommand that ``args`` run: their first word (a list), or a parsed config's ``subcommand`` (a dict)."""
    if isinstance(args, dict):
        return args.get("subcommand")
    return args[0] if args and isinstance(args[0], str) else None


@contextlib.contextmanager
def _only_these_args(args: Any) -> Iterator[None]:
    """Hide the program's own ``sys.argv`` while ``args`` are parsed: LightningCLI warns when it sees both."""
    if args is None:
        yield
        return
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


SUMMARY_METRICS = ("val/loss", "val/acc", "val/mutual_information", "val/expert_usage", "val/sample_entropy")


def fit_summary(trainer: Any, log_dir: str | None = None) -> str:
    """A few lines on a finished fit: run folder (``log_dir``, which ``trainer.log_dir`` broadcasts to every
    process, so ask it on all), checkpoints, final validation metrics, how to look at it."""
    lines = ["gmnn: fit finished" + (f" at epoch {trainer.current_epoch}" if trainer.current_epoch else "")]
    if log_dir:
        lines.append(f"  run folder:  {log_dir}")
    for callback in trainer.checkpoint_callbacks:
        path = callback.best_model_path  # LastCheckpoint keeps one file, last.ckpt, as its "best"
        if path:
            lines.append(f"  {'last' if isinstance(callback, LastCheckpoint) else 'best'} checkpoint: {path}")
    metrics = trainer.callback_metrics
    shown = [f"{name.split('/', 1)[1]} {float(metrics[name]):.4g}" for name in SUMMARY_METRICS if name in metrics]
    if shown:
        bits = " (MI, usage, entropy in bits)" if any(name in metrics for name in SUMMARY_METRICS[2:]) else ""
        lines.append(f"  validation:  {', '.join(shown)}{bits}")
    board = next((logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)), None)
    if board is not None:
        lines.append(f"  look at it:  tensorboard --logdir {board.save_dir}")
    return "\n".join(lines)


def make_cli(args: list[str] | dict[str, Any] | None = None, run: bool = True) -> GMNNCLI:
    """Build (and with ``run=True`` run) the CLI on ``args`` (default: the command line; a dict is a parsed config).

    Installs :func:`gmnn.cli.quiet.silence_known_warnings`, so runs built from Python (sweeps, notebooks)
    are as quiet as the ``gmnn`` command, :func:`gmnn.cli.process.tune_malloc` (freed memory is kept for
    the next step; ``GMNN_MALLOC_TUNING=0`` turns it off) and :func:`gmnn.cli.logging_speed.install` (a
    ``self.log`` call skips Lightning's walk of its accumulator when that is on the value's device already;
    ``GMNN_LOG_FAST_PATH=0`` turns it off).

    Raises:
        ValueError: the ``--config`` files are method fragments without a protocol before them, or are
            composed out of order (:func:`gmnn.cli.fragments.check_config_order`).
    """
    silence_known_warnings()
    tune_malloc()
    install_log_fast_path()
    if not isinstance(args, dict):
        check_not_fragments_alone(sys.argv[1:] if args is None else args)
        check_config_order(sys.argv[1:] if args is None else args)
    with _only_these_args(args):
        return GMNNCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_callback=RunConfig,
            # a truncated key is a typo, not an abbreviation
            parser_kwargs={"allow_abbrev": False, "epilog": EPILOG},
            args=args,
            run=run,
        )


def configs_dir() -> Path:
    """The folder of the shipped configs: the source tree's, else the installed copy (``<prefix>/share/gmnn``).

    Raises:
        FileNotFoundError: neither exists (an install without its data files).
    """
    source = Path(__file__).resolve().parents[2] / "configs"
    installed = Path(sysconfig.get_paths()["data"]) / "share" / "gmnn" / "configs"
    for folder in (source, installed):
        if (folder / "toy" / "dense.yaml").is_file():
            return folder
    raise FileNotFoundError(f"the shipped configs are in neither {source} nor {installed}; reinstall gmnn")


def version() -> str:
    """The installed gmnn version (the source tree's when it is not installed)."""
    try:
        return importlib.metadata.version("gmnn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``gmnn`` console script (``gmnn report ...`` writes the results table).

    Bad input that gmnn detects (``ValueError``), missing dataset files
    (``FileNotFoundError``), a loss that became NaN/inf (``FloatingPointError``)
    and a full disk (``ENOSPC``, also when a logger wraps it) end with a
    one-line message and exit status 1;
    set ``GMNN_TRACEBACK=1`` to see the full traceback. Configuration errors
    (unknown key, wrong type) are jsonargparse's: usage, message, exit status 2.
    """
    silence_known_warnings()
    from_command_line = args is None
    if from_command_line:
        freeze_garbage_collector()  # the imports' objects (gmnn.cli.process)
    args = sys.argv[1:] if args is None else args
    try:
        if args and args[0] in ("--version", "-V"):
            print(f"gmnn {version()}")
            return
        if args and args[0] == "report":
            from gmnn.cli.report import main as report_main

            report_main(args[1:])
            return
        if args and args[0] == "configs":
            print(configs_dir())
            return
        if args and args[0] == "analyze":
            return __import__("gmnn.cli.analyze", fromlist=["main"]).main(args[1:])
        make_cli(None if from_command_line else args)
        multi_process = _close_process_group()
        if from_command_line:
            freeze_garbage_collector()  # the interpreter's exit need not walk the run's objects
            if multi_process:
                _exit_before_finalizing()
    except (ValueError, OSError, FloatingPointError) as error:
        full = _disk_full(error)
        other_os_error = isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and full is None
        if os.environ.get("GMNN_TRACEBACK") or other_os_error:
            raise
        message = f"the disk is full ({full}); free space, then resume with --ckpt_path last" if full else _root_cause(error)
        print(f"gmnn: error: {message}\n(set GMNN_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)


def _close_process_group() -> bool:
    """Destroy the process group a multi-process run opened, on every rank, once the command has finished.

    Only reached when the command succeeded on this rank: after an error the other ranks may still be
    inside a collective. Returns whether there was one (see :func:`_exit_before_finalizing`).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def _exit_before_finalizing() -> NoReturn:
    """End a multi-process command that succeeded (exit status 0) after its threads and exit handlers, without
    the interpreter's finalization.

    gloo's worker threads outlive ``destroy_process_group`` (still running after it and a full collection). A worker
    that drops the last reference to a tensor owning a Python object (a broadcast's payload, moments before)
    takes the GIL; once finalization has begun, Python ends that thread with a forced unwind, which C++ turns
    into ``std::terminate``: "terminate called without an active exception", exit status -6, after a run that
    succeeded. What finalization would do for the run's files is done here: the other non-daemon threads are
    joined, the ``atexit`` handlers run (logging, loggers' clients) and the standard streams are flushed.
    """
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _disk_full(error: BaseException | None) -> OSError | None:
    """The ``ENOSPC`` error behind ``error`` (a logger wraps it in a ``ValueError`` about the logged value)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        error = error.__cause__ or error.__context__
    return None


def _root_cause(error: BaseException) -> BaseException:
    """The innermost error of the same kind (jsonargparse wraps a model's ``ValueError`` in its own)."""
    while isinstance(error.__cause__ or error.__context__, type(error)):
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


if __name__ == "__main__":
    main()
