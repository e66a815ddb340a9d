"""Every method fragment under configs/methods, after the toy protocol, builds the model it names, logs its loss
terms and descends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gmnn.cli import make_cli
from gmnn.models import DenseMoE
from tests.config_checks import FIRST_STEP, check_run, composed_model

ROOT = Path(__file__).resolve().parents[2]
TOY_PROTOCOL = ROOT / "configs" / "toy" / "protocol.yaml"
METHOD_CONFIGS = sorted((ROOT / "configs" / "methods").glob("*.yaml"))


def _experts_checkpoint(path: Path, expert_hidden: list[int]) -> str:
    """A checkpoint with 4 MLP experts on 2-D inputs, as the config expects."""
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=4, expert_hidden=expert_hidden)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return str(path)


@pytest.mark.parametrize("config", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_method_config_builds_its_model_logs_its_terms_and_descends(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_args = composed_model([TOY_PROTOCOL, config])["init_args"]
    extra = []
    gate_checkpoint = None
    for callback in yaml.safe_load(config.read_text()).get("trainer", {}).get("callbacks", []) or []:
        if callback["class_path"].endswith("GateTransfer"):  # the gate of a trained model, at the config's path
            monkeypatch.chdir(tmp_path)
            gate_checkpoint = Path(callback["init_args"]["checkpoint"])
            gate_checkpoint.parent.mkdir(parents=True)
            _experts_checkpoint(gate_checkpoint, init_args["expert_hidden"])
    if init_args.get("init_experts_from"):
        extra.append(f"--model.init_args.init_experts_from={_experts_checkpoint(tmp_path / 'experts.ckpt', init_args['expert_hidden'])}")
    # the shipped trainer settings (progress bar, summary, figures); 2 batches (see test_experiment_configs).
    # Not fast_dev_run: DualTemperatureMoE steps two optimizers per batch, Lightning counts each step, and
    # fast_dev_run's max_steps would then stop it after one batch, before validation.
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
             "--figures.grid_size=20"]  # figures on, on a coarse grid
    cli = make_cli(
        ["fit", "--config", str(TOY_PROTOCOL), "--config", str(config), *short, "--data.init_args.num_samples=600",
         f"--trainer.logger.init_args.save_dir={tmp_path}", FIRST_STEP, *extra]
    )
    check_run(cli, [TOY_PROTOCOL, config], overridden=("init_experts_from",))
    if init_args.get("init_experts_from"):  # the experts are the checkpoint's, and frozen ones stay so
        saved = torch.load(tmp_path / "experts.ckpt", weights_only=False)["state_dict"]
        for name, value in cli.model.experts.state_dict().items():
            assert torch.equal(value, saved[f"experts.{name}"]) == bool(init_args.get("freeze_experts")), name
    if gate_checkpoint is not None:  # the loaded gate, kept fixed
        saved = torch.load(gate_checkpoint, weights_only=False)["state_dict"]
        for name, value in cli.model.gate.state_dict().items():
            assert torch.equal(value, saved[f"gate.{name}"]), name
