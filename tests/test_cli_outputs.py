"""What the ``gmnn`` command tells its user: the fit summary, its version, and no warning of its own."""

from __future__ import annotations

import importlib.metadata
import re
import warnings
from pathlib import Path

import pytest

from gmnn.cli import fit_summary, main, make_cli

ROOT = Path(__file__).resolve().parents[1]


def test_fit_ends_with_a_summary_of_real_files_and_the_final_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=2",
            f"--trainer.logger.init_args.save_dir={tmp_path}", "--data.init_args.num_samples=400"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = make_cli(args)
    assert not [w for w in caught if "args parameter" in str(w.message)], "gmnn passes its own args: no LightningCLI warning"
    err = capsys.readouterr().err
    summary = fit_summary(cli.trainer, cli.trainer.log_dir)
    assert summary in err
    run = tmp_path / "gmnn" / "version_0"
    assert f"run folder:  {run}" in summary
    best = re.search(r"best checkpoint: (\S+)", summary).group(1)
    last = re.search(r"last checkpoint: (\S+)", summary).group(1)
    assert Path(best).parent == Path(last).parent == run / "checkpoints" and Path(best).is_file() and Path(last).name == "last.ckpt"
    shown = dict(re.findall(r"(\w+) ([-\d.e]+)", summary.split("validation:")[1].split("(")[0]))
    metrics = cli.trainer.callback_metrics
    for name in ("loss", "acc", "mutual_information", "expert_usage"):
        assert float(shown[name]) == pytest.approx(float(metrics[f"val/{name}"]), rel=1e-3), name
    assert f"tensorboard --logdir {tmp_path}" in summary


def test_version_and_help_name_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"gmnn {importlib.metadata.version('gmnn')}"
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the epilog
    for command in ("fit", "validate", "test", "predict", "gmnn report", "gmnn analyze"):
        assert command in out
