"""What was written or named before the package reorganisation still works: checkpoints load into the
same classes with the same weights, and every moved module name imports the module's new home."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from gmnn._moved import MOVED
from gmnn.models import DenseMoE, MoEModule, MoETransformerLM, RegressionMoE, StochasticMoE, TopKMoE

BEFORE = Path(__file__).parent / "data" / "checkpoints_before_layout"

CHECKPOINTS = {"dense": DenseMoE, "topk": TopKMoE, "stochastic": StochasticMoE, "regression": RegressionMoE,
               "lm": MoETransformerLM}


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_a_checkpoint_written_before_loads_with_its_weights(name: str) -> None:
    path = BEFORE / f"{name}.ckpt"
    model = MoEModule.load_from_checkpoint(path, map_location="cpu")
    assert type(model) is CHECKPOINTS[name]
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    state = model.state_dict()
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("name", ["dense", "topk", "stochastic"])
def test_a_model_from_before_predicts_as_it_did(name: str) -> None:
    """The loaded model runs: a distribution over the classes for every input."""
    model = MoEModule.load_from_checkpoint(BEFORE / f"{name}.ckpt", map_location="cpu").eval()
    x = torch.randn(16, *model.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = model(x).log_probs.exp()
    assert probs.shape == (16, model.num_classes)
    torch.testing.assert_close(probs.sum(-1), torch.ones(16))


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_imports_the_same_module(old: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])
