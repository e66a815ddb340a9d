"""The ``gmnn`` command: LightningCLI with gmnn's defaults and argument links."""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from gmnn.callbacks.checkpoint import LastCheckpoint
from gmnn.callbacks.figures import DecompositionFigures
from gmnn.models.base import MoEModule

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
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
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
        parser.link_arguments("data.input_shape", "model.init_args.input_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


def make_cli(args: list[str] | dict[str, Any] | None = None, run: bool = True) -> GMNNCLI:
    """Build (and with ``run=True`` run) the CLI on ``args`` (default: the command line; a dict is a parsed config)."""
    return GMNNCLI(
        MoEModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``gmnn`` console script (``gmnn report ...`` writes the results table)."""
    args = sys.argv[1:] if args is None else args
    if args and args[0] == "report":
        from gmnn.report import main as report_main

        report_main(args[1:])
        return
    make_cli(args)


if __name__ == "__main__":
    main()
