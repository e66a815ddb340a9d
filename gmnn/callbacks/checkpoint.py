"""Checkpoint callbacks that write atomically: a full disk or a crash never leaves a truncated file."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from gmnn import pl
from gmnn.pl import ModelCheckpoint, Strategy

PARTIAL_SUFFIX = ".partial"


def _fsync(path: str | Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable(partial: str, filepath: str) -> None:
    """Flush ``partial`` to disk, rename it over ``filepath``, flush the folder (the partial file is removed on failure)."""
    try:
        _fsync(partial)
        os.replace(partial, filepath)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise
    _fsync(os.path.dirname(filepath) or ".", directory=True)


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose files appear whole or not at all.

    Lightning's checkpoint I/O writes the file in place (through a temporary
    file elsewhere that is then copied across filesystems), so a full disk or a
    killed job leaves a truncated ``.ckpt`` that blocks resuming. Here every
    checkpoint is written to ``<name>.partial`` in its destination folder,
    flushed to disk (``fsync``), then renamed over ``<name>`` (atomic on POSIX);
    on failure the partial file is removed and the previous checkpoint stays
    intact. All arguments are ``ModelCheckpoint``'s.

    The flush and the rename (:func:`make_durable`) run on a thread of their own while training goes
    on: waiting for the disk is most of a small model's checkpoint. The callback's file operations
    keep their order (a checkpoint it replaces is removed after the new one is in place), and it
    waits for them before it writes or looks for a file, when training ends (or fails) and in
    ``teardown``, so a finished ``fit`` has every checkpoint on disk under its name; an error of the
    thread (a full disk) is raised there.
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
    _writer: ThreadPoolExecutor | None = None
    _pending: tuple[Future, ...] = ()

    _failed = False  # a queued file operation failed: the ones queued after it are skipped

    def _in_background(self, work: Callable[..., Any], *args: Any) -> None:
        """Run ``work(*args)`` on this callback's file thread, after what was queued before (skipped after a failure:
        a checkpoint that a failed one was to replace stays)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmnn-checkpoint")

        def in_order() -> None:
            if self._failed:
                return
            try:
                work(*args)
            except BaseException:
                self._failed = True
                raise

        self._pending = (*self._pending, self._writer.submit(in_order))

    def wait_for_files(self) -> None:
        """Wait until every queued checkpoint is on disk under its name; raises the first error of them."""
        pending, self._pending = self._pending, ()
        try:
            for future in pending:
                future.result()
        finally:
            self._failed = False

    def file_exists(self, filepath: str | Path, trainer: pl.Trainer) -> bool:
        self.wait_for_files()
        return super().file_exists(filepath, trainer)

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Removed after the queued files are in place (queued itself where the strategy only deletes a file)."""
        if self._pending and type(trainer.strategy).remove_checkpoint is Strategy.remove_checkpoint:
            if trainer.is_global_zero:
                self._in_background(trainer.strategy.checkpoint_io.remove_checkpoint, filepath)
            return
        self.wait_for_files()
        super()._remove_checkpoint(trainer, filepath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self.wait_for_files()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        with contextlib.suppress(Exception):  # the run's own error is the one to report
            self.wait_for_files()
        super().on_exception(trainer, pl_module, exception)
        with contextlib.suppress(Exception):
            self.wait_for_files()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        try:
            self.wait_for_files()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        self.wait_for_files()  # the last file of this name is in place before its next version is written
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
            self._in_background(make_durable, partial, filepath)


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
