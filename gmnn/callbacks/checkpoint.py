"""Checkpoint callbacks that write atomically: a full disk or a crash never leaves a truncated file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from gmnn import pl
from gmnn.pl import ModelCheckpoint

PARTIAL_SUFFIX = ".partial"


def _fsync(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose files appear whole or not at all.

    Lightning's checkpoint I/O writes the file in place (through a temporary
    file elsewhere that is then copied across filesystems), so a full disk or a
    killed job leaves a truncated ``.ckpt`` that blocks resuming. Here every
    checkpoint is written to ``<name>.partial`` in its destination folder,
    flushed to disk (``fsync``), then renamed over ``<name>`` (atomic on POSIX);
    on failure the partial file is removed and the previous checkpoint stays
    intact. All arguments are ``ModelCheckpoint``'s.
    """

    def _ModelCheckpoint__warn_if_dir_not_empty(self, dirpath: str | Path) -> None:
        """Lightning warns when the checkpoint folder is not empty; resuming a run continues in its folder."""
        trainer = self._trainer_for_warning
        resuming = trainer is not None and trainer.ckpt_path and Path(trainer.ckpt_path).resolve().parent == Path(dirpath).resolve()
        if not resuming:
            super()._ModelCheckpoint__warn_if_dir_not_empty(dirpath)  # type: ignore[attr-defined]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer_for_warning = trainer
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self._trainer_for_warning = None

    _trainer_for_warning: pl.Trainer | None = None

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        partial = filepath + PARTIAL_SUFFIX
        try:
            super()._save_checkpoint(trainer, partial)  # every rank takes part; rank zero writes
        except BaseException:
            if trainer.is_global_zero:
                with contextlib.suppress(OSError):
                    os.remove(partial)
            raise
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero and os.path.isfile(partial):
            _fsync(partial)
            os.replace(partial, filepath)
            _fsync(os.path.dirname(filepath) or ".", directory=True)


class LastCheckpoint(AtomicModelCheckpoint):
    """Writes ``last.ckpt`` at the end of every training epoch, whatever the monitored metric did.

    Lightning's ``save_last`` only refreshes ``last.ckpt`` when a top-k
    checkpoint was saved in the same step, so after an epoch that did not
    improve the monitored metric it holds an older model. This callback keeps
    ``last.ckpt`` the newest state, which is what ``--ckpt_path last`` resumes.
    Written atomically (:class:`AtomicModelCheckpoint`).

    Args:
        dirpath: Folder of the checkpoint (default: the logger's ``checkpoints`` folder).
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        super().__init__(
            dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
            enable_version_counter=False, save_on_train_epoch_end=True,
        )
