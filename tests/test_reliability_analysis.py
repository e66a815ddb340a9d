"""`gmnn analyze`: --max_batches is checked, each split has its own files, no figure outlives its table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from gmnn.analysis import LayerReport, write_report
from gmnn.cli import main, make_cli

ROOT = Path(__file__).resolve().parents[1]
DATA = {"problem": "gaussian_clusters", "num_samples": 200, "batch_size": 8}


def tables(split: str) -> list[str]:
    """The tables of a split: layers, experts, labels."""
    return [f"routing_{split}{part}.csv" for part in ("", "_experts", "_labels")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The last checkpoint of a one-epoch toy run."""
    root = tmp_path_factory.mktemp("fit")
    make_cli(["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=1",
              f"--trainer.logger.init_args.save_dir={root}", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false", *(f"--data.init_args.{k}={v}" for k, v in DATA.items())])
    return root / "gmnn" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_batches_below_one_is_refused_in_one_line(
    checkpoint: Path, tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["analyze", "--ckpt_path", str(checkpoint), "--out", str(tmp_path), "--max_batches", value])
    assert stopped.value.code == 1
    assert capsys.readouterr().err.splitlines()[0] == f"gmnn: error: --max_batches must be an integer >= 1, got {value}"
    assert not list(tmp_path.iterdir())  # nothing written


def test_each_split_writes_its_own_table_and_figures(checkpoint: Path) -> None:
    for split in ("val", "test"):
        main(["analyze", "--ckpt_path", str(checkpoint), "--split", split, "--max_batches", "1"])
    out = checkpoint.parents[1] / "routing"
    assert sorted(path.name for path in out.iterdir()) == sorted([
        *tables("test"), "routing_test_gate.png", *tables("val"), "routing_val_gate.png"])
    for split in ("val", "test"):
        (row,) = list(csv.DictReader((out / f"routing_{split}.csv").open()))
        assert row["layer"] == "gate" and int(row["tokens"]) == DATA["batch_size"]


def _rows(*layers: str) -> tuple[list[LayerReport], dict[str, dict[str, torch.Tensor]]]:
    matrices = {"joint": torch.ones(2, 2), "load": torch.ones(2), "coactivation": torch.eye(2)}
    rows = [LayerReport(layer, 2, 4, 1.0, 1.0, 1.0, 0, 0.0, 0.0) for layer in layers]
    return rows, {layer: matrices for layer in layers}


def test_a_new_table_never_sits_beside_an_old_figure(tmp_path: Path) -> None:
    write_report(*_rows("blocks.0.ffn", "blocks.1.ffn"), tmp_path, split="val")
    write_report(*_rows("blocks.0.ffn"), tmp_path, split="test")
    assert (tmp_path / "routing_val_blocks_1_ffn.png").is_file()
    paths = write_report(*_rows("blocks.0.ffn"), tmp_path, split="val")  # another model, one layer
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([
        *tables("test"), "routing_test_blocks_0_ffn.png", *tables("val"), "routing_val_blocks_0_ffn.png"])
    assert [path.name for path in paths] == [*tables("val"), "routing_val_blocks_0_ffn.png"]
    write_report(*_rows(), tmp_path, split="val")  # no layer measured: an empty table, no figure
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([
        *tables("test"), "routing_test_blocks_0_ffn.png", *tables("val")])
