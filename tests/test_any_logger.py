"""gmnn with a logger other than TensorBoard's: figures as PNG files, resume, and ``gmnn report`` on metrics.csv."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from gmnn.cli import make_cli
from gmnn.models import MoEModule
from gmnn.report import report
from tests.conftest import tiny_trainer

ROOT = Path(__file__).resolve().parents[1]


def _args(subcommand: str, save_dir: Path, *extra: str) -> list[str]:
    return [subcommand, "--config", str(ROOT / "configs/toy/dense.yaml"),
            "--trainer.logger=pytorch_lightning.loggers.CSVLogger", f"--trainer.logger.save_dir={save_dir}",
            "--trainer.logger.name=csv", "--data.init_args.num_samples=400", *extra]


def test_csv_logger_gets_png_figures_resumes_and_reports(tmp_path: Path) -> None:
    make_cli(_args("fit", tmp_path, "--trainer.max_epochs=1"))
    run = tmp_path / "csv" / "version_0"
    for name in ("val_decomposition", "val_decision_regions"):
        (png,) = (run / "figures").glob(f"{name}_step*.png")
        assert Image.open(png).size[0] > 100
    resumed = make_cli(_args("fit", tmp_path, "--trainer.max_epochs=2", "--ckpt_path", "last"))
    assert resumed.trainer.current_epoch == 2 and Path(resumed.trainer.log_dir) == run

    last = run / "checkpoints" / "last.ckpt"
    tested = make_cli(_args("test", tmp_path, f"--ckpt_path={last}"))
    (row,) = [r for r in report([tmp_path / "csv"], tmp_path / "out") if r["run"] == tested.trainer.log_dir]
    (expected,) = tiny_trainer().test(MoEModule.load_from_checkpoint(last), datamodule=tested.datamodule, verbose=False)
    assert row["test_error"] == pytest.approx(1 - expected["test/acc"], abs=1e-6)
    assert row["mutual_information"] == pytest.approx(expected["test/mutual_information"], abs=1e-6)
