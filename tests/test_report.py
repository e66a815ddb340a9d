"""The results table: rows per run, mean ± std per configuration, CSV/Markdown/PNG, re-testing."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from gmnn.cli import main, make_cli
from gmnn.data import ToyDataModule
from gmnn.models import MoEModule
from gmnn.cli.report import report
from tests.conftest import tiny_trainer

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(run_dir: Path, train_acc: float, test_acc: float, mi: float) -> None:
    writer = SummaryWriter(str(run_dir))
    writer.add_scalar("train/acc", 0.1, 0)  # an older value: the last one counts
    writer.add_scalar("train/acc", train_acc, 1)
    for name, value in {"acc": test_acc, "mutual_information": mi, "sample_entropy": 0.5, "expert_usage": 1.5}.items():
        writer.add_scalar(f"test/{name}", value, 1)
    writer.close()


def test_two_fake_runs_give_rows_and_mean_std(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_run(tmp_path / "runs" / "dense" / "version_0", 0.9, 0.8, 1.0)
    _fake_run(tmp_path / "runs" / "dense" / "version_1", 0.7, 0.6, 2.0)
    out = tmp_path / "out"
    main(["report", str(tmp_path / "runs"), "--out", str(out)])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [Path(r["run"]).name for r in rows] == ["version_0", "version_1"]
    assert [r["configuration"] for r in rows] == ["dense", "dense"]
    assert float(rows[0]["train_error"]) == pytest.approx(0.1) and float(rows[1]["test_error"]) == pytest.approx(0.4)
    assert math.isnan(float(rows[0]["per_task_entropy"]))  # not logged: left empty, not invented
    (summary,) = list(csv.DictReader((out / "results_summary.csv").open()))
    assert summary["runs"] == "2"
    assert float(summary["test_error_mean"]) == pytest.approx(0.3)
    assert float(summary["test_error_std"]) == pytest.approx(math.sqrt(0.02))  # sample std of 0.2, 0.4
    assert float(summary["mutual_information_mean"]) == pytest.approx(1.5)
    assert float(summary["sample_entropy_std"]) == pytest.approx(0.0)
    table = (out / "results.md").read_text()
    assert "| dense | 2 | 0.200 ± 0.141 | 0.300 ± 0.141 | 1.500 ± 0.707 | 0.500 ± 0.000 | 1.500 ± 0.000 | – ± – |" in table
    assert table in capsys.readouterr().out
    assert (out / "results.png").stat().st_size > 0


def test_retest_fills_in_the_test_metrics_of_the_checkpoint(tmp_path: Path) -> None:
    data = {"problem": "gaussian_clusters", "num_samples": 600, "batch_size": 32}
    make_cli(  # the shipped defaults: progress bar, summary, figures, TensorBoard run folder
        ["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=2",
         f"--trainer.logger.init_args.save_dir={tmp_path}", *(f"--data.init_args.{k}={v}" for k, v in data.items())]
    )
    (row,) = report([tmp_path], tmp_path / "out")
    assert math.isnan(row["test_error"]) and math.isnan(row["mutual_information"])  # fit only: no test metrics

    main(["report", str(tmp_path), "--out", str(tmp_path / "out"), "--retest"])
    (row,) = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    # the same numbers as testing the run's last.ckpt by hand ...
    checkpoint = tmp_path / "gmnn" / "version_0" / "checkpoints" / "last.ckpt"
    trained = MoEModule.load_from_checkpoint(checkpoint)
    (expected,) = tiny_trainer().test(trained, datamodule=ToyDataModule(**data), verbose=False)
    assert float(row["test_error"]) == pytest.approx(1 - expected["test/acc"], abs=1e-6)
    for name in ("mutual_information", "sample_entropy", "expert_usage", "per_task_entropy"):
        assert float(row[name]) == pytest.approx(expected[f"test/{name}"], abs=1e-5), name
    # ... and not those of the same model untrained
    untrained = type(trained)(**{**trained.hparams, "init_experts_from": None})
    (chance,) = tiny_trainer().test(untrained, datamodule=ToyDataModule(**data), verbose=False)
    assert 1 - chance["test/acc"] - float(row["test_error"]) > 0.2
    assert abs(chance["test/sample_entropy"] - float(row["sample_entropy"])) > 0.05


def test_no_runs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RUN_DIRS"):
        report([tmp_path])
    with pytest.raises(ValueError, match="RUN_DIRS"):
        report([tmp_path / "missing"])
