"""Every class of ``gmnn.models.__all__``: train a few steps, save, reload, same outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gmnn.models import MoEModule
from tests.conftest import tiny_trainer
from tests.models.every_variant import (
    SETTINGS, batch, build, expert_parameters, gate_parameters, loader, model_classes, outputs,
)


@pytest.mark.parametrize("name", model_classes())
def test_fit_save_and_reload_gives_the_same_model(name: str, tmp_path: Path) -> None:
    model = build(name, SETTINGS.get(name, [{}])[0])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = tiny_trainer(max_epochs=1)
    trainer.fit(model, loader(model))
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 4
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    moved = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert set(gate_parameters(model)) <= moved, f"gate parameters not trained: {set(gate_parameters(model)) - moved}"
    assert set(expert_parameters(model)) & moved, "no expert was trained"

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    x, _ = batch(model, n=12, seed=1)
    expected = outputs(model, x)
    for loaded in (MoEModule.load_from_checkpoint(path), type(model).load_from_checkpoint(path)):
        assert type(loaded) is type(model) and loaded.hparams == model.hparams
        torch.testing.assert_close(outputs(loaded, x), expected, atol=0, rtol=0)
        assert getattr(loaded, "temperature", None) == getattr(model, "temperature", None)  # the LM has none
    fresh = outputs(build(name, SETTINGS.get(name, [{}])[0]), x)
    assert not torch.allclose(fresh, expected), "the reloaded outputs must be the trained model's, not a fresh one's"
