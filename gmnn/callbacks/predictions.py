"""``gmnn predict`` writes what the model predicts, per sample, to a CSV file in the run folder."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gmnn import pl
from gmnn.callbacks.run_folder import run_folder
from gmnn.pl import BasePredictionWriter


def prediction_columns(outputs: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate the batches of ``predict_step`` dicts into per-sample columns.

    A 1-D tensor ``name`` [B] is one column; a 2-D tensor [B, K] gives ``name_0 .. name_{K-1}``
    (class probabilities, gate probabilities, regression outputs). Other values are left out.
    """
    columns: dict[str, Tensor] = {}
    keys = [k for k, v in outputs[0].items() if isinstance(v, Tensor) and v.dim() in (1, 2)] if outputs else []
    for key in keys:
        values = torch.cat([batch[key].detach().cpu() for batch in outputs])
        if values.dim() == 1:
            columns[key] = values
        else:
            columns.update({f"{key}_{j}": values[:, j] for j in range(values.shape[1])})
    return columns


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (one row per sample, in the data's order) at the end of ``predict``.

    Columns: ``index`` (the sample's position in the prediction set), then what the
    model's ``predict_step`` returns: for classification ``prediction``, ``expert``
    (the gate's choice), ``probs_<class>`` and ``gate_probs_<expert>``. The file goes to
    ``output_dir`` or else the run folder (for ``gmnn predict --ckpt_path`` that is the
    checkpoint's run, ``<run>/predict/``). Under several processes each writes
    ``predictions.rank<R>.csv`` with its own samples.

    Args:
        output_dir: Folder of the file (default: the run folder).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.path: Path | None = None

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        folder = self.output_dir or run_folder(trainer)  # run_folder broadcasts: every rank asks
        if folder is None or not predictions:
            return
        outputs = predictions[0] if isinstance(predictions[0], list) else predictions  # one dataloader
        indices = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) and batch_indices[0] and isinstance(batch_indices[0][0], list) else batch_indices
        columns = prediction_columns(outputs)
        flat = [i for batch in indices for i in (batch if isinstance(batch, list) else [batch])] if indices else []
        count = len(next(iter(columns.values()))) if columns else 0
        columns = {"index": torch.tensor(flat if len(flat) == count else range(count)), **columns}
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions.rank{trainer.global_rank}.csv"
        self.path = Path(folder) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(zip(*(column.tolist() for column in columns.values())))
