"""The ``gmnn`` command and every shipped config."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from gmnn.cli import main, make_cli
from gmnn.models import MoEModule

ROOT = Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TOY_CONFIGS = sorted((ROOT / "configs" / "toy").glob("*.yaml"))


def test_help_lists_the_subcommands() -> None:
    result = subprocess.run([sys.executable, "-m", "gmnn.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("fit", "validate", "test", "predict"):
        assert command in result.stdout
    assert "Warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_command_builds_only_its_own_subcommand_and_parses_as_with_all_four(
    subcommand: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gmnn <subcommand> ...`` builds that subcommand's parser alone (the others hold every option again, most
    of the parser's cost); its parsed config is the one a parser of all four gives. ``gmnn --help`` and an unknown
    subcommand still see all four (``test_help_lists_the_subcommands``, ``test_an_unknown_subcommand_lists_all_four``)."""
    from gmnn.cli import app
    from gmnn.pl import LightningCLI

    class Parsed(Exception):
        pass

    class StopAfterParsing(app.GMNNCLI):
        def _parse_ckpt_path(self) -> None:
            raise Parsed(self)

    class AllFour(StopAfterParsing):
        def subcommands(self) -> dict[str, set[str]]:
            return LightningCLI.subcommands()

    args = [subcommand, "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=3"]
    configs = {}
    for cls, expected in ((StopAfterParsing, {subcommand}), (AllFour, {"fit", "validate", "test", "predict"})):
        monkeypatch.setattr(app, "GMNNCLI", cls)
        with pytest.raises(Parsed) as parsed:
            make_cli(args)
        cli = parsed.value.args[0]
        assert set(cli._subcommand_parsers) == expected
        configs[cls] = cli.config
    assert configs[StopAfterParsing] == configs[AllFour]
    assert configs[StopAfterParsing][subcommand]["trainer"]["max_epochs"] == 3


def test_an_unknown_subcommand_lists_all_four(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_cli(["fitt", "--trainer.max_epochs=1"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'fitt' (choose from 'fit', 'validate', 'test', 'predict')" in capsys.readouterr().err


def test_the_readme_first_command_prints_no_warning(tmp_path: Path) -> None:
    """The first command users run, with the shipped defaults, as a fresh process, as users run it."""
    result = subprocess.run(
        [sys.executable, "-m", "gmnn.cli", "fit", "--config", str(ROOT / "configs/toy/dense.yaml"),
         "--trainer.max_epochs=1", "--data.init_args.num_samples=600"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr and "deprecated" not in result.stderr, result.stderr[-3000:]
    assert "Tip:" not in result.stdout + result.stderr, "Lightning's suggestion to install its cloud packages is printed"
    assert "GPU available: False" in result.stdout + result.stderr, "Lightning's other notices must stay"


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_passes_print_config(config: Path) -> None:
    """A method fragment (configs/methods) is checked after the toy protocol, every other config alone."""
    fragment = config.parent == ROOT / "configs" / "methods"
    before = ["--config", str(ROOT / "configs/toy/protocol.yaml")] if fragment else []
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as exit_info:
        make_cli(["fit", *before, "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(stdout.getvalue())
    assert printed["model"]["class_path"] == yaml.safe_load(config.read_text())["model"]["class_path"]
    assert ("class_path" not in (yaml.safe_load(config.read_text()).get("data") or {})) == fragment


@pytest.mark.parametrize("args", [["--config", "FRAGMENT"], ["--config=FRAGMENT", "--trainer.max_epochs=1"], ["-c", "FRAGMENT"]])
def test_a_method_fragment_alone_is_refused_with_a_one_line_error(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fragment = str(ROOT / "configs/methods/gateless.yaml")  # it sets data.init_args, not the data module
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *(a.replace("FRAGMENT", fragment) for a in args), f"--trainer.default_root_dir={tmp_path}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"--config {fragment}: no data module in any config" in err and "protocol.yaml --config FRAGMENT" in err
    # with a protocol first, or with the data module given on the command line, it is a whole config
    cli = make_cli(["--config", str(ROOT / "configs/toy/protocol.yaml"), "--config", fragment], run=False)
    assert cli.model.hparams.expert_hidden == [8] and cli.model.hparams.gate_hidden == [32]
    assert cli.datamodule.hparams.problem == "checkerboard"
    importance = str(ROOT / "configs/methods/importance.yaml")
    cli = make_cli(["--config", importance, "--data=gmnn.data.ToyDataModule"], run=False)
    assert cli.model.regularizer_weights == {"importance": 0.2}


def test_data_sizes_are_linked_into_the_model(tmp_path: Path) -> None:
    cli = make_cli(
        ["--config", str(ROOT / "configs/toy/dense.yaml"), "--data.init_args.problem=gaussian_clusters",
         f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    assert cli.model.num_classes == 3 and cli.model.input_shape == (2,)


def test_the_config_copy_for_hyperparameters_is_lightnings(tmp_path: Path) -> None:
    """GMNNCLI dumps the config for the models' hyperparameters without validating it again: the same copy
    as Lightning's own, link targets (the data sizes) included."""
    from gmnn.pl import LightningCLI

    cli = make_cli(["--config", str(ROOT / "configs/toy/protocol.yaml"), "--config",
                    str(ROOT / "configs/methods/importance.yaml"), f"--trainer.default_root_dir={tmp_path}"], run=False)
    ours = cli.config_dump
    del cli.config_dump
    LightningCLI._dump_config(cli)
    assert ours == cli.config_dump and ours["model"]["init_args"]["num_classes"] == cli.model.num_classes


@pytest.mark.parametrize("config", TOY_CONFIGS, ids=lambda p: p.stem)
def test_fit_writes_a_checkpoint_and_events_that_reload(config: Path, tmp_path: Path) -> None:
    cli = make_cli(
        ["fit", "--config", str(config), "--trainer.max_epochs=2", "--data.init_args.num_samples=600",
         f"--trainer.logger.init_args.save_dir={tmp_path}"]
    )
    run_dir = Path(cli.trainer.logger.log_dir)
    assert list(run_dir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "config.yaml").exists()
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.exists() and best.name.startswith("best-")
    # the checkpoint is the model at the end of training
    model = cli.model.eval()
    reloaded = MoEModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    assert type(reloaded) is type(model)
    x = torch.randn(16, 2)
    torch.testing.assert_close(reloaded(x).log_probs, model(x).log_probs)


def test_test_and_predict_from_a_checkpoint(tmp_path: Path) -> None:
    config = str(ROOT / "configs/toy/dense.yaml")
    common = ["--config", config, "--data.init_args.num_samples=400", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    fit = make_cli(["fit", "--trainer.max_epochs=1", *common])
    ckpt = str(Path(fit.trainer.logger.log_dir) / "checkpoints" / "last.ckpt")
    test = make_cli(["test", "--ckpt_path", ckpt, *common])
    assert 0.0 <= test.trainer.callback_metrics["test/acc"] <= 1.0
    predict = make_cli(["predict", "--ckpt_path", ckpt, *common])
    batches = predict.trainer.predict_loop.predictions
    assert batches and batches[0]["probs"].shape[1] == 8  # split_discs: 8 classes
    torch.testing.assert_close(batches[0]["probs"].sum(-1), torch.ones(len(batches[0]["probs"])))


def test_runs_built_from_python_are_as_quiet_as_the_command(tmp_path: Path) -> None:
    """make_cli (what sweeps and notebooks call) installs the same narrow third-party filters as ``gmnn``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_cli(["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), "--trainer.max_epochs=1",
                  "--data.init_args.num_samples=400", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m or "It is recommended to use `self.log('train/" in m], messages
