"""configs/paper/xai21/: the first paper's setups build what their headers say and train a few steps on fake files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gmnn.cli import make_cli
from tests.config_checks import FIRST_STEP, check_run
from tests.data.fake_files import write_idx

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "paper" / "xai21").glob("*.yaml"))


def test_both_setups_are_shipped() -> None:
    assert [p.stem for p in CONFIGS] == ["fmnist_mnist", "mnist"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_xai21_config_trains_with_the_reference_optimizer_sizes_and_networks(config: Path, tmp_path: Path) -> None:
    write_idx(tmp_path, "MNIST", train=60, test=24)
    write_idx(tmp_path, "FashionMNIST", train=60, test=24)
    # the shipped sizes (10,048 / 2,000) do not fit the fake files: smaller ones, the same rule
    cli = make_cli(
        ["fit", "--config", str(config), f"--data.init_args.root={tmp_path}", "--data.init_args.train_size=24",
         "--data.init_args.test_size=12", "--data.init_args.val_size=8", "--trainer.fast_dev_run=2",
         f"--trainer.default_root_dir={tmp_path}", FIRST_STEP]
    )
    check_run(cli, config)
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.RMSprop
    assert optimizer.defaults["lr"] == 0.001 and optimizer.defaults["momentum"] == 0.9
    assert optimizer.defaults["weight_decay"] == 0 and not cli.trainer.lr_scheduler_configs
    dm, model = cli.datamodule, cli.model
    twelve = config.stem == "fmnist_mnist"
    assert model.num_classes == dm.num_classes == (12 if twelve else 10)
    assert model.num_experts == (6 if twelve else 5)
    assert dm.hparams.batch_size == (64 if twelve else 32)
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 24, "val": 8, "test": 12}
    # normalisation 0.5 / 0.5: fake image i is filled with i, so the first training image is (0 - 0.5) / 0.5
    assert dm.splits["train"].tensors[0][0].unique().tolist() == [-1.0]
    # expert fc 169 -> 5 -> 10 -> C, gate fc 169 -> 128 -> 64 -> E
    expert = model.experts.experts[0]
    assert [layer.out_features for layer in expert.mlp.body if isinstance(layer, torch.nn.Linear)] == [5, 10]
    assert expert.mlp.body[0].in_features == 169 and expert.mlp.head.out_features == model.num_classes
    gate_layers = [layer.out_features for layer in model.gate.mlp.body if isinstance(layer, torch.nn.Linear)]
    assert gate_layers == [128, 64] and model.gate.mlp.head.out_features == model.num_experts
