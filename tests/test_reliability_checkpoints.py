"""A checkpoint is data, not code: every entry point reads tensors and plain values only, and stops on an unsafe
or damaged file with one line naming the file and the option that gave it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from gmnn.callbacks import GateTransfer
from gmnn.cli import main, make_cli
from gmnn.models import DenseMoE, MoEModule
from tests.test_cli import ROOT

FIT = ["--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=1", "--data.init_args.num_samples=200",
       "--figures.every_n_epochs=0"]


class Payload:
    """Unpickled, it creates ``marker``: what a hostile checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch toy fit through the CLI: its run folder (``.../gmnn/version_0``)."""
    save_dir = tmp_path_factory.mktemp("runs")
    cli = make_cli(["fit", *FIT, f"--trainer.logger.init_args.save_dir={save_dir}"])
    return Path(cli.trainer.logger.log_dir)


@pytest.fixture
def hostile(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``run`` whose only checkpoint, ``last.ckpt``, carries a payload; the payload's marker file."""
    copy = tmp_path / "runs" / "gmnn" / "version_0"
    shutil.copytree(run, copy)
    for path in (copy / "checkpoints").glob("*.ckpt"):
        path.unlink()
    marker = tmp_path / "payload_ran"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["payload"] = Payload(marker)
    torch.save(checkpoint, copy / "checkpoints" / "last.ckpt")
    torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)  # the payload is real: loading it unsafely runs it
    assert marker.is_file()
    marker.unlink()
    return copy / "checkpoints" / "last.ckpt", marker


def _one_line_naming(text: str, path: Path) -> str:
    """The single line of ``text`` that names ``path`` (no traceback, no namespace dump)."""
    assert "Traceback" not in text and "Namespace(" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if str(path) in line]
    assert len(lines) == 1, text[-3000:]
    return lines[0]


def _fails_in_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``gmnn ARGS``: it must exit with status 1; the error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("gmnn: error: "), err[-3000:]
    return err.splitlines()[0]


SUBCOMMANDS = ["fit", "validate", "test", "predict"]


@pytest.mark.parametrize("weights_only", [[], ["--weights_only", "true"]], ids=["default", "weights_only_true"])
@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_ckpt_path_never_runs_a_payload(subcommand: str, weights_only: list[str], hostile: tuple[Path, Path],
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = hostile
    line = _fails_in_one_line([subcommand, *FIT, "--ckpt_path", str(path), *weights_only,
                               f"--trainer.logger.init_args.save_dir={tmp_path / 'new'}"], capsys)
    assert not marker.exists(), "the checkpoint's payload ran"
    assert line.startswith(f"gmnn: error: --ckpt_path {path} cannot be read: it holds "), line


def test_ckpt_path_last_never_runs_a_payload(hostile: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = hostile
    save_dir = path.parents[3]
    capsys.readouterr()
    main(["fit", *FIT, "--ckpt_path", "last", f"--trainer.logger.init_args.save_dir={save_dir}"])
    assert not marker.exists(), "the checkpoint's payload ran"
    line = _one_line_naming(capsys.readouterr().err, path)
    assert line.startswith(f"gmnn: --ckpt_path last: skipping {path}: it holds "), line


def test_analyze_and_report_never_run_a_payload(hostile: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = hostile
    line = _fails_in_one_line(["analyze", "--ckpt_path", str(path), "--out", str(tmp_path / "routing")], capsys)
    assert not marker.exists(), "gmnn analyze ran the checkpoint's payload"
    assert f"{path} cannot be read: it holds " in line, line
    line = _fails_in_one_line(["report", str(path.parents[1]), "--retest", "--out", str(tmp_path / "table")], capsys)
    assert not marker.exists(), "gmnn report --retest ran the checkpoint's payload"
    assert f"{path} cannot be read: it holds " in line, line


@pytest.mark.parametrize("kwargs", [{}, {"weights_only": True}], ids=["default", "weights_only_true"])
def test_load_from_checkpoint_never_runs_a_payload(kwargs: dict, hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    for cls in (MoEModule, DenseMoE):
        with pytest.raises(ValueError, match=rf"^checkpoint {path} cannot be read: it holds [^\n]*$"):
            cls.load_from_checkpoint(path, **kwargs)
        assert not marker.exists(), f"{cls.__name__}.load_from_checkpoint ran the checkpoint's payload"


def test_init_experts_from_never_runs_a_payload(hostile: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = hostile
    with pytest.raises(ValueError, match=rf"^init_experts_from {path} cannot be read: it holds [^\n]*$"):
        DenseMoE(input_shape=[2], num_classes=8, init_experts_from=str(path))
    assert not marker.exists(), "init_experts_from ran the checkpoint's payload"
    line = _fails_in_one_line(["fit", *FIT, f"--model.init_args.init_experts_from={path}",
                               f"--trainer.logger.init_args.save_dir={tmp_path}"], capsys)
    assert not marker.exists(), "--model.init_args.init_experts_from ran the checkpoint's payload"
    assert line.startswith(f"gmnn: error: init_experts_from {path} cannot be read: it holds "), line


def test_gate_transfer_never_runs_a_payload(hostile: tuple[Path, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = hostile
    with pytest.raises(ValueError, match=rf"^GateTransfer checkpoint {path} cannot be read: it holds [^\n]*$"):
        GateTransfer(str(path)).setup(None, DenseMoE(input_shape=[2], num_classes=8), "fit")  # type: ignore[arg-type]
    assert not marker.exists(), "GateTransfer ran the checkpoint's payload"
    line = _fails_in_one_line(["fit", *FIT, "--trainer.callbacks+=gmnn.callbacks.GateTransfer",
                               f"--trainer.callbacks.checkpoint={path}", f"--trainer.logger.init_args.save_dir={tmp_path}"],
                              capsys)
    assert not marker.exists(), "the GateTransfer callback ran the checkpoint's payload"
    assert line.startswith(f"gmnn: error: GateTransfer checkpoint {path} cannot be read: it holds "), line


def _damaged(run: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Damaged copies of the run's checkpoint: each file and the reason gmnn gives for it."""
    folder.mkdir()
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    files = {"empty": (b"", "it is empty (0 bytes)"), "truncated": (data[: len(data) // 2], "it is truncated or not a checkpoint"),
             "text": (b"not a checkpoint\n", "it is truncated or not a checkpoint")}
    for name, (content, _) in files.items():
        (folder / f"{name}.ckpt").write_bytes(content)
    return {name: (folder / f"{name}.ckpt", reason) for name, (_, reason) in files.items()}


@pytest.mark.parametrize("damage", ["empty", "truncated", "text"])
def test_damaged_reuse_checkpoints_are_named_like_ckpt_path(damage: str, run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path, reason = _damaged(run, tmp_path / "damaged")[damage]
    save_dir = f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}"
    ckpt_line = _fails_in_one_line(["test", *FIT, "--ckpt_path", str(path), save_dir], capsys)
    assert ckpt_line.startswith(f"gmnn: error: --ckpt_path {path} cannot be read: {reason}"), ckpt_line
    cases = {"init_experts_from": [f"--model.init_args.init_experts_from={path}"],
             "GateTransfer checkpoint": ["--trainer.callbacks+=gmnn.callbacks.GateTransfer",
                                         f"--trainer.callbacks.checkpoint={path}"]}
    for option, args in cases.items():
        line = _fails_in_one_line(["fit", *FIT, *args, save_dir], capsys)
        assert line == ckpt_line.replace("--ckpt_path", option, 1), line
        assert "gate_from" not in line


def test_model_options_the_checkpoint_overrides_are_named(run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = run / "checkpoints" / "last.ckpt"
    common = ["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt),
              f"--trainer.logger.init_args.save_dir={tmp_path}"]
    capsys.readouterr()
    cli = make_cli([*common, "--model.init_args.temperature=3.0", "--model.init_args.lr=0.01",
                    "--model.init_args.expert_hidden=[16]"])
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "ignor" in line]
    assert len(warned) == 1, err[-3000:]
    assert warned[0].startswith(f"gmnn: warning: --ckpt_path {ckpt}: the model comes from the checkpoint, ignoring "), warned
    assert "--model.init_args.temperature=3.0 (the checkpoint's: 1.0)" in warned[0]
    assert "--model.init_args.expert_hidden=[16] (the checkpoint's: [32, 32])" in warned[0]
    assert "lr" not in warned[0], "an option equal to the checkpoint's is not ignored"
    assert cli.model.temperature == 1.0
    assert cli.config["test"]["weights_only"] is True, "Lightning's own load reads tensors and plain values only"
    make_cli(common)
    assert "ignor" not in capsys.readouterr().err
