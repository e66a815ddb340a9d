"""The TensorBoard figures callback: which figures, when, and skipping without TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from gmnn.callbacks import DecompositionFigures
from gmnn.callbacks.figures import decision_regions_figure
from gmnn.models import DenseMoE, TopKMoE
from tests.conftest import tiny_trainer


def _loader(n: int = 64, dim: int = 2) -> torch.utils.data.DataLoader:
    x = torch.randn(n, dim)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def _tags(log_dir: str, kind: str = "images") -> dict[str, int]:
    events = EventAccumulator(log_dir, size_guidance={kind: 0}).Reload()
    read = events.Images if kind == "images" else events.Histograms
    return {tag: len(read(tag)) for tag in events.Tags()[kind]}


def test_writes_every_figure_each_validation_epoch_and_after_testing(tmp_path: Path) -> None:
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=3)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = tiny_trainer(max_epochs=2, logger=logger, callbacks=[DecompositionFigures(grid_size=20, max_points=50)])
    trainer.fit(model, _loader(), _loader())
    trainer.test(model, _loader(), verbose=False)
    tags = _tags(logger.log_dir)
    assert tags == {"val/decomposition": 2, "val/decision_regions": 2, "test/decomposition": 1, "test/decision_regions": 1}
    histograms = _tags(logger.log_dir, "histograms")  # two validation epochs (not the sanity check), one test
    assert histograms == {f"{stage}/gate_probs/expert_{e}": n for stage, n in (("val", 2), ("test", 1)) for e in range(3)}


def test_no_decision_regions_for_images_and_every_n_epochs(tmp_path: Path) -> None:
    model = TopKMoE(k=1, input_shape=[3], num_classes=2, num_experts=2)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = tiny_trainer(max_epochs=3, logger=logger, callbacks=[DecompositionFigures(every_n_epochs=2)])
    trainer.fit(model, _loader(dim=3), _loader(dim=3))
    assert _tags(logger.log_dir) == {"val/decomposition": 1}


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


def test_histograms_hold_the_gate_probabilities(tmp_path: Path) -> None:
    from gmnn.callbacks.figures import write_histograms

    writer = SummaryWriter(str(tmp_path))
    write_histograms(writer, "val/gate_probs", torch.tensor([[2, 0, 0, 1], [0, 0, 0, 0]]), step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0}).Reload()
    assert events.Tags()["histograms"] == ["val/gate_probs/expert_0"]  # expert 1 saw no samples
    (event,) = events.Histograms("val/gate_probs/expert_0")
    value = event.histogram_value
    assert event.step == 3 and value.num == 3 and value.min == 0.0 and value.max == 1.0
    assert list(value.bucket) == [2, 0, 0, 1] and value.sum == pytest.approx(2 * 0.125 + 0.875)


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


def test_a_single_expert_model_gets_its_figures(tmp_path: Path) -> None:
    from gmnn.models import SingleModel

    model = SingleModel(input_shape=[3], num_classes=2)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer = tiny_trainer(max_epochs=1, logger=logger, callbacks=[DecompositionFigures()])
    trainer.fit(model, _loader(dim=3), _loader(dim=3))
    assert _tags(logger.log_dir) == {"val/decomposition": 1}


def test_figures_show_the_hand_computed_allocation_usage_and_regions(tmp_path: Path) -> None:
    from tests.hand_set import two_expert_model

    model = two_expert_model()
    x, y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0, 1, 0])
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    callback = DecompositionFigures(grid_size=12)
    trainer = tiny_trainer(logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[callback])
    trainer.test(model, data, verbose=False)
    figures = callback.figures(trainer, model, "test")
    heat, bars = figures["test/decomposition"].axes
    # class 0 = (A, A, B): mean gate [7/12, 5/12]; class 1 = (B): [1/4, 3/4]. Rows are experts, columns classes.
    torch.testing.assert_close(torch.tensor(heat.images[0].get_array()), torch.tensor([[7 / 12, 1 / 4], [5 / 12, 3 / 4]]),
                               check_dtype=False)
    # A goes to expert 0 (predicts 0: right twice), B to expert 1 (predicts 1: right once of twice)
    assert [t.get_text() for t in heat.get_yticklabels()] == ["expert 0 (1.00)", "expert 1 (0.50)"]
    assert [p.get_height() for p in bars.patches] == pytest.approx([0.5, 0.5, 0.5, 0.5])  # mean gate, routed share
    regions = figures["test/decision_regions"]
    panels = {ax.get_title(): torch.tensor(ax.collections[0].get_array()).view(12, 12) for ax in regions.axes if ax.get_title()}
    # the grid spans the points' box [0, 1]^2 with a 5% margin; gate logit gap ln 3 (r0 - r1), r = relu(point)
    xs = torch.linspace(-0.05, 1.05, 12)
    gx, gy = torch.meshgrid(xs, xs, indexing="xy")
    gap = math.log(3) * (gx.clamp_min(0) - gy.clamp_min(0))
    g0 = torch.sigmoid(gap)
    assert torch.equal(panels["gate: chosen expert"], (gap < 0).long())
    assert torch.equal(panels["expert 0: class"], torch.zeros(12, 12, dtype=torch.long))
    assert torch.equal(panels["expert 1: class"], torch.ones(12, 12, dtype=torch.long))
    assert torch.equal(panels["model: class"], (0.8 * g0 + 0.3 * (1 - g0) < 0.5).long())  # p(class 0) < 1/2
    plt.close("all")


def test_the_kept_plot_shows_the_latest_values_and_no_figure_is_left_open(tmp_path: Path) -> None:
    """The decomposition figure is built once per stage and redrawn with each epoch's values."""
    from gmnn.callbacks.figures import DecompositionPlot

    plot = DecompositionPlot(2, 3)
    first = plot.update(torch.full((2, 3), 0.5), torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.5]), torch.tensor([0.6, 0.4]))
    allocation = torch.tensor([[0.9, 0.2, 0.0], [0.1, 0.8, 1.0]])
    again = plot.update(allocation, torch.tensor([0.75, 1.0]), torch.tensor([0.4, 0.6]), torch.tensor([0.25, 0.75]))
    heat, bars = again.axes
    assert again is first
    torch.testing.assert_close(torch.tensor(heat.images[0].get_array()), allocation, check_dtype=False)
    assert [t.get_text() for t in heat.get_yticklabels()] == ["expert 0 (0.75)", "expert 1 (1.00)"]
    assert [p.get_height() for p in bars.patches] == pytest.approx([0.4, 0.6, 0.25, 0.75])
    from gmnn.callbacks.figures import decomposition_figure, figure_pixels

    torch.manual_seed(0)
    for _ in range(2):  # only the values are redrawn over the rest (blitting): the image of a full draw
        values = (torch.rand(2, 3), torch.rand(2), torch.rand(2), torch.rand(2))
        plot.update(*values)
        drawn, full = plot.pixels(), figure_pixels(decomposition_figure(*values))
        assert drawn.shape == full.shape
        differs = (abs(drawn.astype(int) - full.astype(int)).max(-1) > 16).mean()
        assert differs < 1e-3, f"{differs:.2%} of the pixels differ from a full draw"
    plt.close(plot.fig)

    open_before = len(plt.get_fignums())
    callback = DecompositionFigures()
    model = DenseMoE(input_shape=[3], num_classes=2, num_experts=3)  # 3-D input: the decomposition figure only
    logger = TensorBoardLogger(tmp_path, name="run")
    tiny_trainer(max_epochs=3, logger=logger, callbacks=[callback]).fit(model, _loader(dim=3), _loader(dim=3))
    assert _tags(logger.log_dir) == {"val/decomposition": 3}
    assert len(plt.get_fignums()) == open_before, "the kept figure is not pyplot's; every other one is closed"
    shown = torch.tensor(callback._plots["val"].image.get_array())
    torch.testing.assert_close(shown, model.allocation["val"].compute()["allocation"], check_dtype=False)


def test_the_kept_decision_regions_show_each_models_regions_as_a_full_draw_would(tmp_path: Path) -> None:
    """The regions figure is built once per stage (while its points stay the same), and its redrawn meshes and
    points give the image of a new figure drawn whole, for each model in turn."""
    from gmnn.callbacks.decision_regions import DecisionRegionsPlot
    from gmnn.callbacks.figures import figure_pixels

    points = torch.randn(200, 2)
    labels = (points[:, 0] > 0).long() * 2 + (points[:, 1] > 0).long()
    plot = DecisionRegionsPlot(3, 4, points, labels, size=16, pyplot=False)
    for _ in range(2):
        model = DenseMoE(input_shape=[2], num_classes=4, num_experts=3).eval()
        plot.update(model)
        drawn = plot.pixels()
        full = figure_pixels(decision_regions_figure(model, points, labels, size=16, pyplot=False))
        assert drawn.shape == full.shape
        assert (drawn != full).any(-1).mean() < 1e-4, "the kept figure differs from a full draw"
    assert plot.shows(3, 4, points, labels, 16) and not plot.shows(3, 4, points + 1, labels, 16)
    assert not plot.shows(2, 4, points, labels, 16) and not plot.shows(3, 4, points, labels, 17)

    callback = DecompositionFigures(grid_size=12)
    model = DenseMoE(input_shape=[2], num_classes=2, num_experts=2)
    trainer = tiny_trainer(max_epochs=3, logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[callback])
    kept = []
    trainer.callbacks.append(type("Spy", (pl.Callback,), {
        "on_validation_epoch_end": lambda self, t, m: kept.append(callback._regions.get("val"))})())
    trainer.fit(model, _loader(), _loader())
    assert len(kept) == 4 and kept[0] is None and kept[1] is not None and kept[1] is kept[2] is kept[3]


def test_every_panel_shows_each_point_once_in_its_class_colour() -> None:
    """The points are drawn as one line of markers per class: every point on every panel, at its place, in the
    colour its class has on the class panels' colour scale, and no point twice."""
    from matplotlib import colormaps

    from gmnn.callbacks.decision_regions import DecisionRegionsPlot

    points = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 3] * 100)  # class 1 has no point: no line for it
    plot = DecisionRegionsPlot(2, 4, points, labels, size=8, pyplot=False)
    expected = sorted((round(x, 5), round(y, 5), c) for (x, y), c in zip(points.tolist(), labels.tolist()))
    for ax, _, dots in plot.panels:
        assert [line for line in ax.lines] == dots and len(dots) == 3
        shown = []
        for line in dots:
            colour = line.get_color()
            classes = [c for c in range(4) if tuple(colormaps["coolwarm"](c / 3)) == tuple(colour)]
            assert len(classes) == 1, f"{colour} is no class colour"
            shown += [(round(x, 5), round(y, 5), classes[0]) for x, y in line.get_xydata().tolist()]
        assert sorted(shown) == expected
    plt.close(plot.fig)
