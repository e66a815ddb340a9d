"""The folder of one run, whatever the logger: where its checkpoints, ``config.yaml``, figures and predictions go.

Lightning's ``trainer.log_dir`` is a run's own folder only for TensorBoard's and
the CSV logger (``<save_dir>/<name>/version_N``); for every other logger (W&B,
MLflow, Comet, one of your own) it is the logger's ``save_dir``, shared by all
runs. gmnn therefore keeps each run's files where Lightning's ``ModelCheckpoint``
puts its ``checkpoints/`` folder: ``<save_dir>/<name>/<version>`` of the first
logger (``save_dir`` falling back to the trainer's ``default_root_dir``), so a
run folder is the same for every logger and ``--ckpt_path last`` can find it.
"""

from __future__ import annotations

import os

from gmnn.pl import CSVLogger, TensorBoardLogger, Trainer

#: Loggers whose ``log_dir`` is the run's own folder (``<save_dir>/<name>/version_N``).
FOLDER_LOGGERS = (TensorBoardLogger, CSVLogger)


def run_folder(trainer: Trainer) -> str | None:
    """The run's folder (``None`` without a logger); a broadcast under DDP, so every process must ask.

    Args:
        trainer: The trainer of the run.
    """
    if not trainer.loggers:
        return None
    logger = trainer.loggers[0]
    if isinstance(logger, FOLDER_LOGGERS):
        return trainer.log_dir
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    folder = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    return trainer.strategy.broadcast(folder)

