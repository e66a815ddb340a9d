"""Checkpoint callbacks."""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` at the end of every training epoch, whatever the monitored metric did.

    Lightning's ``save_last`` only refreshes ``last.ckpt`` when a top-k
    checkpoint was saved in the same step, so after an epoch that did not
    improve the monitored metric it holds an older model. This callback keeps
    ``last.ckpt`` the newest state, which is what ``--ckpt_path last`` resumes.

    Args:
        dirpath: Folder of the checkpoint (default: the logger's ``checkpoints`` folder).
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        super().__init__(
            dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
            enable_version_counter=False, save_on_train_epoch_end=True,
        )
