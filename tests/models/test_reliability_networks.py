"""A user's expert or gate network that returns the wrong thing is refused, in every variant, with one line
naming the network (expert or gate), what it returned and what is expected."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from gmnn.cli import make_cli
from gmnn.models import (
    AttentionGateMoE,
    DenseMoE,
    DualTemperatureMoE,
    ExpertLossGateMoE,
    GatelessMoE,
    HardEMMoE,
    ProductOfExperts,
    RegressionMoE,
    SingleModel,
    StochasticMoE,
    TopKMoE,
)

ROOT = Path(__file__).resolve().parents[2]
BATCH, CLASSES, EXPERTS = 8, 3, 4


class Linear(nn.Module):
    """A linear network on flattened inputs (width 4 when gmnn passes no ``out_features``, as for a query)."""

    def __init__(self, in_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, out_features or 4)

    def scores(self, x: Tensor) -> Tensor:
        return self.layer(x.flatten(1))


class OneRow(Linear):
    """Logits for a batch of 1, whatever the batch."""

    def forward(self, x: Tensor) -> Tensor:
        return self.scores(x).mean(0, keepdim=True)


class IntegerLogits(Linear):
    def forward(self, x: Tensor) -> Tensor:
        return self.scores(x).long()


class FlatLogits(Linear):
    """One number per sample: logits of shape [batch]."""

    def forward(self, x: Tensor) -> Tensor:
        return self.scores(x).sum(1)


class HiddenOfOneRow(Linear):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.scores(x)
        return logits, logits[:1]


class IntegerHidden(Linear):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.scores(x)
        return logits, logits.long()


class NotATensor(Linear):
    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.scores(x)]


# (network, the words that follow the network's role and class in its one line; N: the rows it was given, all
# of the batch or, under sparse routing, those routed to it)
BAD = {
    "OneRow": (OneRow, r"returned logits of shape \[1, \d+\] for (?P<n>\d+) inputs; expected \[(?P=n), {width}\]"),
    "IntegerLogits": (IntegerLogits, r"returned logits of dtype torch.int64; expected a floating-point dtype"),
    "FlatLogits": (FlatLogits, r"returned logits of shape \[(?P<n>\d+)\] for (?P=n) inputs; expected \[(?P=n), {width}\]"),
    "HiddenOfOneRow": (HiddenOfOneRow, r"returned hidden of shape \[1, \d+\] for (?P<n>\d+) inputs; expected \[(?P=n), H\]"),
    "IntegerHidden": (IntegerHidden, r"returned hidden of dtype torch.int64; expected a floating-point dtype"),
    "NotATensor": (NotATensor, r"returned a list; expected a tensor of logits or a \(logits, hidden\) pair"),
}
# every classification variant with its options; which of its networks a user may give
VARIANTS: dict[str, tuple[type, dict[str, Any], tuple[str, ...]]] = {
    "DenseMoE": (DenseMoE, {}, ("expert", "gate")),
    "TopKMoE": (TopKMoE, {"k": 1}, ("expert", "gate")),
    "TopKMoE-k2-unbatched": (TopKMoE, {"k": 2, "batched_experts": False}, ("expert", "gate")),
    "TopKMoE-capacity": (TopKMoE, {"k": 1, "capacity_factor": 1.25}, ("expert", "gate")),
    "TopKMoE-stochastic": (TopKMoE, {"k": 1, "gate_gradient": "stochastic"}, ("expert", "gate")),
    "StochasticMoE": (StochasticMoE, {}, ("expert", "gate")),
    "ProductOfExperts": (ProductOfExperts, {}, ("expert", "gate")),
    "AttentionGateMoE": (AttentionGateMoE, {}, ("expert", "gate")),
    "SingleModel": (SingleModel, {}, ("expert",)),
    "HardEMMoE": (HardEMMoE, {}, ("expert", "gate")),
    "GatelessMoE": (GatelessMoE, {}, ("expert",)),
    "ExpertLossGateMoE": (ExpertLossGateMoE, {}, ("expert", "gate")),
    "DualTemperatureMoE": (DualTemperatureMoE, {}, ("expert", "gate")),
    "RegressionMoE": (RegressionMoE, {}, ("expert", "gate")),
    "RegressionMoE-k1": (RegressionMoE, {"k": 1}, ("expert", "gate")),
}
CASES = [(variant, role, bad) for variant, (_, _, roles) in VARIANTS.items() for role in roles for bad in BAD]


def _width(variant: str, role: str) -> str:
    if role == "expert":
        return str(CLASSES)
    return r"\*" if variant.startswith("AttentionGateMoE") else str(EXPERTS)  # the query's width is its own


def _first_step(model: Any, x: Tensor, y: Tensor) -> None:
    """What the first training step computes: the forward pass and the loss terms."""
    model.train()
    out = model(x)
    model.loss_terms(out, x, y)


@pytest.mark.parametrize(("variant", "role", "bad"), CASES, ids=["-".join(case) for case in CASES])
def test_a_bad_network_is_refused_with_one_line_naming_it(variant: str, role: str, bad: str) -> None:
    cls, options, _ = VARIANTS[variant]
    network, words = BAD[bad]
    spec = {"class_path": f"{__name__}.{network.__name__}"}
    x = torch.randn(BATCH, 2)
    y = torch.randn(BATCH, CLASSES) if cls is RegressionMoE else torch.randint(0, CLASSES, (BATCH,))
    with pytest.raises(ValueError) as error:  # at construction where the model dry-runs a network (attention)
        _first_step(cls(input_shape=[2], num_classes=CLASSES, num_experts=EXPERTS, **{role: spec}, **options), x, y)
    message = str(error.value)
    assert message.startswith(f"{role} {__name__}.{network.__name__} "), message
    assert re.search(words.format(width=_width(variant, role)), message) and "\n" not in message, message


def test_good_networks_still_train_in_every_variant() -> None:
    spec = {"class_path": f"{__name__}.TwoOutputs"}
    for variant, (cls, options, roles) in VARIANTS.items():
        model = cls(input_shape=[2], num_classes=CLASSES, num_experts=EXPERTS, **{role: spec for role in roles}, **options)
        x = torch.randn(BATCH, 2)
        y = torch.randn(BATCH, CLASSES) if cls is RegressionMoE else torch.randint(0, CLASSES, (BATCH,))
        _first_step(model, x, y)  # no error
        assert variant


class TwoOutputs(Linear):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.scores(x)
        return logits, torch.tanh(logits)


@pytest.mark.parametrize("bad", ["OneRow", "IntegerLogits"])
def test_gmnn_fit_refuses_a_bad_top1_expert_with_one_line(bad: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The shipped top-1 config, its expert replaced by the user's network, through the command line."""
    expert = f"--model.init_args.expert={{class_path: {__name__}.{BAD[bad][0].__name__}}}"
    with pytest.raises(ValueError) as error:
        make_cli(["fit", "--config", str(ROOT / "configs/toy/topk.yaml"), expert, "--trainer.fast_dev_run=1",
                  "--data.init_args.num_samples=600", f"--trainer.default_root_dir={tmp_path}",
                  "--trainer.logger=false"])
    message = str(error.value)
    assert message.startswith(f"expert {__name__}.{BAD[bad][0].__name__} returned ") and "\n" not in message, message
