"""gmnn with a logger other than TensorBoard's: figures as PNG files, resume, and ``gmnn report`` on metrics.csv."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pytorch_lightning.loggers import Logger

from gmnn.cli import make_cli
from gmnn.models import MoEModule
from gmnn.cli.report import report
from tests.conftest import tiny_trainer

ROOT = Path(__file__).resolve().parents[1]


def _args(subcommand: str, save_dir: Path, *extra: str) -> list[str]:
    return [subcommand, "--config", str(ROOT / "configs/toy/dense.yaml"),
            "--trainer.logger=pytorch_lightning.loggers.CSVLogger", f"--trainer.logger.save_dir={save_dir}",
            "--trainer.logger.name=csv", "--data.init_args.num_samples=400", *extra]


def _epochs_logged(path: Path) -> list[int]:
    with path.open(newline="") as handle:
        return sorted({int(float(row["epoch"])) for row in csv.DictReader(handle) if row.get("val/loss")})


def test_csv_logger_gets_png_figures_resumes_and_reports(tmp_path: Path) -> None:
    make_cli(_args("fit", tmp_path, "--trainer.max_epochs=1"))
    run = tmp_path / "csv" / "version_0"
    for name in ("val_decomposition", "val_decision_regions"):
        (png,) = (run / "figures").glob(f"{name}_step*.png")
        assert Image.open(png).size[0] > 100
    epochs_before = _epochs_logged(run / "metrics.csv")
    assert epochs_before == [0]
    resumed = make_cli(_args("fit", tmp_path, "--trainer.max_epochs=2", "--ckpt_path", "last"))
    assert resumed.trainer.current_epoch == 2 and Path(resumed.trainer.log_dir) == run
    assert _epochs_logged(run / "metrics.csv") == [0, 1]  # Lightning's CSV writer would have deleted epoch 0

    last = run / "checkpoints" / "last.ckpt"
    tested = make_cli(_args("test", tmp_path, f"--ckpt_path={last}"))
    assert Path(tested.trainer.log_dir) == run / "test"  # into the checkpoint's run, not a new version folder
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["version_0"]
    (row,) = report([tmp_path / "csv"], tmp_path / "out")  # one run, its test metrics merged in
    assert row["run"] == str(run)
    (expected,) = tiny_trainer().test(MoEModule.load_from_checkpoint(last), datamodule=tested.datamodule, verbose=False)
    assert row["test_error"] == pytest.approx(1 - expected["test/acc"], abs=1e-6)
    assert row["mutual_information"] == pytest.approx(expected["test/mutual_information"], abs=1e-6)


class RunIdLogger(Logger):
    """A logger laid out like W&B's: runs under ``<save_dir>/<project>/<run id>``, no ``log_dir`` of its own
    (Lightning's ``trainer.log_dir`` is then the shared ``save_dir``), images through ``log_image``."""

    def __init__(self, save_dir: str, project: str = "lightning_logs", version: str | None = None) -> None:
        super().__init__()
        self._save_dir, self._project, self._version = save_dir, project, version or uuid.uuid4().hex[:8]
        self.images: list[tuple[str, tuple[int, ...], int | None]] = []

    @property
    def name(self) -> str:
        return self._project

    @property
    def version(self) -> str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_image(self, key: str, images: list[Any], step: int | None = None) -> None:
        self.images.append((key, tuple(images[0].shape), step))


def test_a_logger_without_run_folders_gets_one_per_run_its_images_and_resume(tmp_path: Path) -> None:
    def args(*extra: str) -> list[str]:
        return ["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.logger=tests.test_any_logger.RunIdLogger",
                f"--trainer.logger.save_dir={tmp_path}", "--data.init_args.num_samples=400", *extra]

    first = make_cli(args("--trainer.max_epochs=1"))
    logger = first.trainer.logger
    run = tmp_path / "lightning_logs" / logger.version
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert not (tmp_path / "config.yaml").exists()  # not in the save_dir that every run shares
    shapes = {key: shape for key, shape, _ in logger.images}
    assert {"val/decomposition", "val/decision_regions"} <= set(shapes)
    assert all(len(shape) == 3 and shape[2] == 3 and shape[0] > 100 for shape in shapes.values())
    assert not (run / "figures").exists()  # the logger took them

    resumed = make_cli(args("--trainer.max_epochs=2", "--ckpt_path", "last"))
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.logger.version == logger.version
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == [logger.version]
