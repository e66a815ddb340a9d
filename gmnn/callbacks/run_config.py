"""The run's record: its resolved ``config.yaml``, written once by the run that owns the folder."""

from __future__ import annotations

import os
from pathlib import Path

from gmnn import pl
from gmnn.callbacks.run_folder import run_folder
from gmnn.pl import SaveConfigCallback


class RunConfig(SaveConfigCallback):
    """Writes the resolved config as ``config.yaml`` into the run folder, never over another record.

    - No logger (``--trainer.logger=false``): there is no run folder, nothing is written.
    - ``config.yaml`` already there with the same text (a resumed run): left untouched.
    - ``config.yaml`` there with other settings (a resume that trains longer, say): the new
      settings go to ``config.resumed-<n>.yaml`` beside it; the original record stays as written.

    The file is written atomically (a temporary file, then a rename), by global rank zero only.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved or not trainer.loggers or not self.save_to_log_dir:
            return
        self.already_saved = True
        log_dir = run_folder(trainer)  # a broadcast under DDP: every process asks, in the same hook
        if not trainer.is_global_zero or log_dir is None:
            return
        text = self.parser.dump(self.config, skip_unset=False, skip_validation=True)  # validated when parsed
        path = Path(log_dir) / self.config_filename
        if path.is_file():
            if path.read_text() == text:
                return
            stem, suffix = path.stem, path.suffix
            index = 1
            while (path.parent / f"{stem}.resumed-{index}{suffix}").exists():
                index += 1
            path = path.parent / f"{stem}.resumed-{index}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        os.replace(partial, path)
