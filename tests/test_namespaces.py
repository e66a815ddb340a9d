"""Both Lightning namespaces: gmnn's models train under ``lightning.pytorch`` (``GMNN_LIGHTNING=lightning``),
and ``gmnn fit`` takes a user's ``lightning.pytorch`` data module, callback and logger without a setting."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lightning")

USER_MODULE = textwrap.dedent('''
    from pathlib import Path

    import lightning.pytorch as lp
    import torch
    from torch.utils.data import DataLoader, TensorDataset


    class Halves(lp.LightningDataModule):
        """Two classes: the sign of the first coordinate."""

        input_shape = [2]
        num_classes = 2

        def __init__(self, num_samples: int = 256) -> None:
            super().__init__()
            x = torch.randn(num_samples, 2, generator=torch.Generator().manual_seed(0))
            self.data = TensorDataset(x, (x[:, 0] > 0).long())

        def train_dataloader(self):
            return DataLoader(self.data, batch_size=64)

        def val_dataloader(self):
            return DataLoader(self.data, batch_size=64)


    class Epochs(lp.Callback):
        """Writes the number of finished training epochs to epochs.txt."""

        def on_train_epoch_end(self, trainer, pl_module):
            Path("epochs.txt").write_text(str(trainer.current_epoch + 1))
''')

TRAIN_WITH_L = textwrap.dedent('''
    import lightning as L
    from gmnn.data import ToyDataModule
    from gmnn.models import DenseMoE

    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, default_root_dir="runs")
    trainer.fit(DenseMoE(input_shape=[2], num_classes=8), datamodule=ToyDataModule(problem="split_discs", num_samples=512))
    print("trained", trainer.global_step)
''')


def run(code_or_args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    environment.pop("GMNN_LIGHTNING", None) if "GMNN_LIGHTNING" not in env else None
    return subprocess.run([sys.executable, *code_or_args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def test_a_lightning_trainer_trains_gmnn_models_with_the_setting(tmp_path: Path) -> None:
    result = run(["-c", TRAIN_WITH_L], tmp_path, GMNN_LIGHTNING="lightning")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 4" in result.stdout


def test_without_the_setting_a_lightning_trainer_refuses_them(tmp_path: Path) -> None:
    """The setting is what makes it work: pytorch_lightning classes are not lightning.pytorch ones."""
    result = run(["-c", TRAIN_WITH_L], tmp_path)
    assert result.returncode != 0
    assert "LightningModule" in result.stderr


def test_gmnn_fit_takes_lightning_pytorch_data_callbacks_and_loggers(tmp_path: Path) -> None:
    (tmp_path / "user_classes.py").write_text(USER_MODULE)
    args = ["-m", "gmnn.cli", "fit", "--model", "gmnn.models.DenseMoE", "--data", "user_classes.Halves",
            "--trainer.callbacks+=user_classes.Epochs", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", "logs", "--trainer.max_epochs", "2"]
    result = run(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "epochs.txt").read_text() == "2"
    assert list((tmp_path / "logs").rglob("metrics.csv")), "the lightning.pytorch CSVLogger wrote no metrics"
    assert "fit finished" in result.stderr


def test_an_unknown_namespace_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run(["-c", "import gmnn.models"], tmp_path, GMNN_LIGHTNING="lightning_v3")
    assert result.returncode != 0
    assert "GMNN_LIGHTNING must be one of ('pytorch_lightning', 'lightning', 'lightning.pytorch'), got 'lightning_v3'" in result.stderr
    # refused before the seconds of importing torch and Lightning
    check = "import sys\ntry:\n    import gmnn.models\nexcept ValueError:\n    print(sorted({'torch', 'pytorch_lightning'} & set(sys.modules)))"
    assert run(["-c", check], tmp_path, GMNN_LIGHTNING="lightning_v3").stdout.strip() == "[]"
