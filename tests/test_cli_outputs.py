"""What the ``gmnn`` command tells its user: the fit summary, its version, and no warning of its own."""

from __future__ import annotations

import importlib.metadata
import math
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


def test_fit_test_predict_side_by_side_in_one_run_folder(tmp_path: Path) -> None:
    """test/predict from a checkpoint log into its run (``<run>/test``, ``<run>/predict``); report counts one run."""
    import csv

    import torch

    from gmnn.models import MoEModule
    from gmnn.cli.report import report
    from tests.conftest import tiny_trainer

    common = ["--config", str(ROOT / "configs/toy/dense.yaml"), f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--data.init_args.num_samples=400"]
    make_cli(["fit", *common, "--trainer.max_epochs=1"])
    run = tmp_path / "gmnn" / "version_0"
    record = (run / "config.yaml").read_bytes()
    last = run / "checkpoints" / "last.ckpt"
    tested = make_cli(["test", *common, f"--ckpt_path={last}"])
    predicted = make_cli(["predict", *common, f"--ckpt_path={last}"])
    assert sorted(p.name for p in (tmp_path / "gmnn").iterdir()) == ["version_0"]
    assert Path(tested.trainer.log_dir) == run / "test" and (run / "config.yaml").read_bytes() == record

    (row,) = report([tmp_path / "gmnn"], tmp_path / "out")
    model = MoEModule.load_from_checkpoint(last)
    (expected,) = tiny_trainer().test(model, datamodule=tested.datamodule, verbose=False)
    assert row["test_error"] == pytest.approx(1 - expected["test/acc"], abs=1e-6)
    assert not math.isnan(row["train_error"]), "the fit's own train curve belongs to the same row"

    with (run / "predict" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    x = torch.cat([batch[0] for batch in predicted.datamodule.predict_dataloader()])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert len(rows) == len(x) and [int(r["index"]) for r in rows] == list(range(len(x)))
    assert [int(r["prediction"]) for r in rows] == out.log_probs.argmax(-1).tolist()
    gate = torch.tensor([[float(r[f"gate_probs_{e}"]) for e in range(model.num_experts)] for r in rows])
    torch.testing.assert_close(gate, out.gate_probs, rtol=1e-5, atol=1e-6)
