"""Transfer experiments: a trained gate reused (fixed) with new experts; experts pre-trained on class pairs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.callbacks import GateTransfer
from gmnn.models import DenseMoE

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("pretrain_pair_experts", ROOT / "scripts" / "pretrain_pair_experts.py")
pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pairs)

COMMON = dict(input_shape=[2], num_classes=4, num_experts=2, expert_hidden=[8], gate_hidden=[8], lr=0.05)


def four_blobs(n: int = 256) -> TensorDataset:
    """Class c sits at the corner c of the square; labels 0..3."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    corners = torch.tensor([[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]])
    return TensorDataset(corners[y] + 0.3 * torch.randn(n, 2, generator=g), y)


def fit(model: DenseMoE, callbacks: list[pl.Callback], tmp_path: Path) -> None:
    loader = DataLoader(four_blobs(), batch_size=64, shuffle=True)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path)
    trainer.fit(model, loader)


def checkpoint_of(model: DenseMoE, path: Path) -> str:
    torch.save({"state_dict": model.state_dict()}, path)
    return str(path)


def test_gate_transfer_loads_the_gate_keeps_it_fixed_and_trains_new_experts(tmp_path: Path) -> None:
    pl.seed_everything(0)
    first = DenseMoE(**COMMON)
    initial_experts = {k: v.clone() for k, v in first.experts.state_dict().items()}
    fit(first, [], tmp_path)
    source = checkpoint_of(first, tmp_path / "first.ckpt")

    pl.seed_everything(0)  # the same seed: the new experts start from the first model's initial weights (_same_wts)
    second = DenseMoE(**COMMON)
    for name, value in second.experts.state_dict().items():
        assert torch.equal(value, initial_experts[name]), name
    fit(second, [GateTransfer(source)], tmp_path)
    for name, value in second.gate.state_dict().items():  # the first model's trained gate, unchanged by training
        assert torch.equal(value, first.gate.state_dict()[name]), name
    assert any(not torch.equal(v, initial_experts[k]) for k, v in second.experts.state_dict().items())

    pl.seed_everything(1)
    unfrozen = DenseMoE(**COMMON)
    fit(unfrozen, [GateTransfer(source, freeze=False)], tmp_path)
    assert any(not torch.equal(v, first.gate.state_dict()[k]) for k, v in unfrozen.gate.state_dict().items())


def test_gate_transfer_refuses_a_missing_file_and_another_gate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint must be"):
        GateTransfer("")
    model = DenseMoE(**COMMON)
    with pytest.raises(ValueError, match="GateTransfer checkpoint must be an existing checkpoint"):
        GateTransfer(str(tmp_path / "none.ckpt")).setup(None, model, "fit")  # type: ignore[arg-type]
    other = checkpoint_of(DenseMoE(**{**COMMON, "gate_hidden": [16]}), tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="another architecture"):
        GateTransfer(other).setup(None, model, "fit")  # type: ignore[arg-type]


def test_pair_experts_learn_only_their_classes_and_load_with_init_experts_from(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = DenseMoE(**COMMON)
    data = four_blobs()
    accuracies = pairs.pretrain_experts(model.experts, data, [[0, 1], [2, 3]], epochs=30, lr=0.05, batch_size=64)
    assert min(accuracies) > 0.95
    x, y = data.tensors
    with torch.no_grad():
        logits, _ = model.experts(x)  # [B, E, C]
    predicted = logits.argmax(-1)
    # expert 0 never saw classes 2 and 3: it predicts 0 or 1 everywhere; expert 1 the other way round
    assert set(predicted[:, 0].tolist()) <= {0, 1} and set(predicted[:, 1].tolist()) <= {2, 3}
    assert (predicted[y < 2, 0] == y[y < 2]).float().mean() > 0.95
    path = tmp_path / "pairs.ckpt"
    pairs.save_experts(model.experts, path)
    reused = DenseMoE(**COMMON, init_experts_from=str(path), freeze_experts=True)
    for name, value in reused.experts.state_dict().items():
        assert torch.equal(value, model.experts.state_dict()[name]), name


def test_pair_experts_refuse_bad_class_lists() -> None:
    model = DenseMoE(**COMMON)
    with pytest.raises(ValueError, match="one non-empty class list per expert"):
        pairs.pretrain_experts(model.experts, four_blobs(), [[0, 1]])
    with pytest.raises(ValueError, match="has no samples"):
        pairs.pretrain_experts(model.experts, four_blobs(), [[0, 1], [7]])
    with pytest.raises(ValueError, match="comma-separated"):
        pairs.parse_classes(["0,a"])
    assert pairs.parse_classes(["0,7", "1,9"]) == [[0, 7], [1, 9]]
    assert len(pairs.REFERENCE_SPLITS) == 5 and all(sorted(sum(s, [])) == list(range(10)) for s in pairs.REFERENCE_SPLITS)
