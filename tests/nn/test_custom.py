"""Experts and gates given by class path (gmnn.nn.mixture.custom), from Python and from a YAML config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from gmnn.cli import make_cli
from gmnn.models import DenseMoE, MoEModule, SingleModel
from gmnn.nn.mixture.custom import LogitsAndHidden
from tests.conftest import tiny_trainer

ROOT = Path(__file__).resolve().parents[2]


class LogitsOnly(nn.Module):
    """Returns only logits; its hidden layer is the output of ``act``."""

    def __init__(self, in_features: int, out_features: int, width: int = 3) -> None:
        super().__init__()
        self.inner, self.act, self.out = nn.Linear(in_features, width), nn.Tanh(), nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.inner(x.flatten(1))))


class WrongWidth(nn.Module):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, 7)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


SPEC = {"class_path": f"{__name__}.LogitsOnly", "init_args": {"width": 5}, "hidden_from": "act"}


@pytest.mark.parametrize("batched", [True, False])
def test_a_class_path_expert_is_built_with_the_sizes_and_its_hidden_layer_is_the_named_submodule(batched: bool) -> None:
    model = DenseMoE(input_shape=[2], num_classes=3, num_experts=2, expert=SPEC, batched_experts=batched)
    expert = model.experts[1]
    assert isinstance(expert, LogitsAndHidden) and isinstance(expert.network, LogitsOnly)
    assert expert.network.inner.weight.shape == (5, 2) and expert.network.out.weight.shape == (3, 5)
    x = torch.randn(6, 2)
    logits, hidden = model.experts(x)
    net = expert.network
    torch.testing.assert_close(hidden[:, 1], torch.tanh(net.inner(x)))  # the hand-computed hidden layer
    torch.testing.assert_close(logits[:, 1], net(x))
    model(x).log_probs.sum().backward()
    assert net.inner.weight.grad is not None and net.inner.weight.grad.abs().sum() > 0


def test_batched_and_one_by_one_custom_experts_agree() -> None:
    torch.manual_seed(0)
    batched = DenseMoE(input_shape=[2], num_classes=3, num_experts=3, expert=SPEC, batched_experts=True)
    plain = DenseMoE(input_shape=[2], num_classes=3, num_experts=3, expert=SPEC, batched_experts=False)
    plain.load_state_dict(batched.state_dict())
    x = torch.randn(8, 2)
    torch.testing.assert_close(batched(x).log_probs, plain(x).log_probs)


def test_a_class_path_network_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    gate = {"class_path": f"{__name__}.LogitsOnly"}  # no hidden_from: the hidden layer is the logits
    model = DenseMoE(input_shape=[2], num_classes=3, num_experts=2, expert=SPEC, gate=gate)
    x, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = MoEModule.load_from_checkpoint(path)
    assert type(loaded) is DenseMoE and loaded.hparams["expert"] == SPEC
    assert isinstance(loaded.gate.network, LogitsOnly)
    torch.testing.assert_close(loaded(x).log_probs, model(x).log_probs, atol=0, rtol=0)


def test_single_model_builds_a_class_path_expert_as_configured() -> None:
    model = SingleModel(input_shape=[2], num_classes=3, expert=SPEC)
    assert model.experts[0].network.inner.weight.shape == (5, 2)


def test_a_yaml_config_injects_a_class_path_expert(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "configs/toy/dense.yaml").read_text())
    config["model"]["init_args"]["expert"] = SPEC
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = make_cli(["--config", str(path), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert isinstance(cli.model.experts[0].network, LogitsOnly)
    assert cli.model.hparams["expert"]["class_path"] == SPEC["class_path"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resnet", "expert must be one of ('mlp', 'conv') or"),
        ({"class_path": "nowhere.Module"}, "expert.class_path 'nowhere.Module' does not import"),
        ({"class_path": "torch.zeros"}, "must name a torch.nn.Module subclass"),
        ({"class_path": f"{__name__}.LogitsOnly", "init": {}}, "expert has unknown keys ['init']"),
        ({"class_path": f"{__name__}.LogitsOnly", "hidden_from": "body"}, "hidden_from 'body' is not a submodule"),
    ],
)
def test_bad_network_specs_are_refused_with_one_line(spec: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        DenseMoE(input_shape=[2], num_classes=3, num_experts=2, expert=spec)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_logits_of_the_wrong_width_are_refused() -> None:
    model = DenseMoE(input_shape=[2], num_classes=3, num_experts=2, expert={"class_path": f"{__name__}.WrongWidth"})
    with pytest.raises(ValueError, match=r"^expert tests.nn.test_custom.WrongWidth returned logits of shape \[4, 7\] for 4 inputs; expected \[4, 3\]$"):
        model(torch.randn(4, 2))


def test_the_readme_command_line_makes_linear_experts(tmp_path: Path) -> None:
    """``--model.init_args.expert='{class_path: torch.nn.Linear}'``: in/out features passed by gmnn."""
    cli = make_cli(
        ["--config", str(ROOT / "configs/toy/dense.yaml"), "--model.init_args.expert={class_path: torch.nn.Linear}",
         f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    linear = cli.model.experts[0].network
    assert type(linear) is nn.Linear and linear.weight.shape == (cli.model.num_classes, 2)
    x = torch.randn(3, 2)
    logits, hidden = cli.model.experts(x)
    torch.testing.assert_close(logits[:, 0], linear(x))
    torch.testing.assert_close(hidden, logits)  # no hidden_from: the hidden layer is the logits
