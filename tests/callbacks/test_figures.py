"""The TensorBoard figures callback: which figures, when, and skipping without TensorBoard."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmnn.callbacks import DecompositionFigures
from gmnn.callbacks.figures import decision_regions_figure
from gmnn.models import DenseMoE, TopKMoE
from tests.conftest import tiny_trainer


def _loader(n: int = 64, dim: int = 2) -> torch.utils.data.DataLoader:
    x = torch.randn(n, dim)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def _image_tags(log_dir: str) -> dict[str, int]:
    events = EventAccumulator(log_dir, size_guidance={"images": 0}).Reload()
    return {tag: len(events.Images(tag)) for tag in events.Tags()["images"]}


def test_writes_every_figure_each_validation_epoch_and_after_testing(tmp_path: Path) -> None:
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=3)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = tiny_trainer(max_epochs=2, logger=logger, callbacks=[DecompositionFigures(grid_size=20, max_points=50)])
    trainer.fit(model, _loader(), _loader())
    trainer.test(model, _loader(), verbose=False)
    tags = _image_tags(logger.log_dir)
    for name in ("allocation", "usage", "gate_histograms", "decision_regions"):
        assert tags[f"val/{name}"] == 2, tags  # two epochs, not the sanity check
        assert tags[f"test/{name}"] == 1, tags


def test_no_decision_regions_for_images_and_every_n_epochs(tmp_path: Path) -> None:
    model = TopKMoE(k=1, input_shape=[3], num_classes=2, num_experts=2)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = tiny_trainer(max_epochs=3, logger=logger, callbacks=[DecompositionFigures(every_n_epochs=2)])
    trainer.fit(model, _loader(dim=3), _loader(dim=3))
    tags = _image_tags(logger.log_dir)
    assert tags == {"val/allocation": 1, "val/usage": 1, "val/gate_histograms": 1}


def test_skipped_cleanly_without_tensorboard(tmp_path: Path) -> None:
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=2)
    callback = DecompositionFigures()
    trainer = tiny_trainer(max_epochs=1, logger=CSVLogger(tmp_path), callbacks=[callback])
    trainer.fit(model, _loader(), _loader())
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
    tiny_trainer(max_epochs=1, callbacks=[callback]).fit(model, _loader(), _loader())  # logger=False


def test_allocation_is_reset_each_epoch(tmp_path: Path) -> None:
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=2)
    trainer = tiny_trainer(max_epochs=3, logger=TensorBoardLogger(tmp_path), callbacks=[DecompositionFigures(grid_size=10)])
    trainer.fit(model, _loader(), _loader(n=40))
    assert int(model.allocation["val"].class_counts.sum()) == 40


def test_decision_regions_show_the_gate_each_expert_and_the_model() -> None:
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=3).eval()
    fig = decision_regions_figure(model, torch.randn(30, 2), torch.randint(0, 2, (30,)), size=10)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    plt.close(fig)
    assert titles == ["gate: chosen expert", "expert 0: class", "expert 1: class", "expert 2: class", "model: class"]


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        DecompositionFigures(every_n_epochs=-1)
    with pytest.raises(ValueError, match="grid_size"):
        DecompositionFigures(grid_size=0)
