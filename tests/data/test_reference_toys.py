"""The reference implementation's toy problems and its 80/20 stratified split, against its formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gmnn.data import ToyDataModule
from gmnn.data.reference_toys import board_3x2_labels, disc_labels, rotate_quadrants
from gmnn.data.toy import checkerboard


def reference_rotated(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """helper/data_generator.py checker_board_rotated, re-written in numpy from the reference's steps."""
    labels = (np.sum(np.ceil(2 * points).astype(int), axis=1) % 2).astype(int)
    boxes = [(-1, 0, -1, 0, 30), (-1, 0, 0, 1, 45), (0, 1, -1, 0, 60), (0, 1, 0, 1, 120)]
    xs, ys = [], []
    for xa, xb, ya, yb, deg in boxes:
        index = (points[:, 0] >= xa) & (points[:, 0] <= xb) & (points[:, 1] >= ya) & (points[:, 1] <= yb)
        sub = points[index].copy()
        sub[:, 0] -= xa
        sub[:, 1] -= ya
        r = math.radians(deg)
        rm = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
        tmp = (rm @ sub.T).T
        tmp[:, 0] += xa
        tmp[:, 1] += ya
        tmp[:, 0] = (xb - xa) * (tmp[:, 0] - tmp[:, 0].min()) / (tmp[:, 0].max() - tmp[:, 0].min()) + xa
        tmp[:, 1] = (yb - ya) * (tmp[:, 1] - tmp[:, 1].min()) / (tmp[:, 1].max() - tmp[:, 1].min()) + ya
        xs.append(tmp)
        ys.append(labels[index])
    return np.vstack(xs), np.concatenate(ys)


def test_rotated_quadrants_equal_the_reference_steps() -> None:
    points = np.random.default_rng(0).random((400, 2)) * 2 - 1
    x, y = rotate_quadrants(torch.from_numpy(points))
    ref_x, ref_y = reference_rotated(points)
    np.testing.assert_allclose(x.numpy(), ref_x, atol=1e-12)
    np.testing.assert_array_equal(y.numpy(), ref_y)
    # each quadrant is mapped back onto itself, and its labels are a rotated 2x2 board (both classes)
    assert x.min() == -1 and x.max() == 1 and len(x) == 400


def test_rotated_quadrants_hand_computed_on_two_points() -> None:
    # two points of the lower-left quadrant: rotated by 30 degrees about (-1, -1), then min-max rescaled
    # per axis onto [-1, 0]: the one with the smaller rotated x goes to x = -1, the other to x = 0.
    p = torch.tensor([[-0.9, -0.2], [-0.3, -0.8]], dtype=torch.float64)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    rot = [(c * 0.1 - s * 0.8, s * 0.1 + c * 0.8), (c * 0.7 - s * 0.2, s * 0.7 + c * 0.2)]  # (0.1,0.8), (0.7,0.2)
    assert rot[0][0] < rot[1][0] and rot[0][1] > rot[1][1]
    x, y = rotate_quadrants(p)
    torch.testing.assert_close(x, torch.tensor([[-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64))
    assert y.tolist() == [(-1 + 0) % 2, (0 + -1) % 2]  # ceil(2x): (-1, 0) and (0, -1): both class 1


def test_disc_and_3x2_board_hand_values() -> None:
    p = torch.tensor([[0.5, 0.5], [0.6, 0.6], [-0.9, -0.9], [0.0, -0.5], [0.9, 0.5], [-0.2, 0.3]])
    assert disc_labels(p).tolist() == [1, 0, 0, 1, 0, 1]  # x^2 + y^2 = .5, .72, 1.62, .25, 1.06, .13 vs 0.66
    # ceil(1.5 (x + 1)) + ceil(y + 1): 3+2, 3+2, 1+1, 2+1, 3+2, 2+2 -> parity
    assert board_3x2_labels(p).tolist() == [1, 1, 0, 1, 1, 0]


def test_the_reference_4x4_board_is_gmnn_checkerboard_4x4() -> None:
    x, y = checkerboard(2000, 0.0, torch.Generator().manual_seed(1), cells=4)
    assert torch.equal(y, (torch.ceil(2 * x).long().sum(1) % 2))


@pytest.mark.parametrize("problem", ["quadrants_rotated", "disc", "board_3x2"])
def test_reference_problems_from_the_data_module_keep_the_reference_labels(problem: str) -> None:
    x, y = ToyDataModule(problem, num_samples=500, seed=2).generate()
    assert x.shape == (500, 2) and x.dtype == torch.float32 and set(y.tolist()) == {0, 1}
    if problem == "disc":
        assert torch.equal(y, (x.double().square().sum(1) < 0.66).long())
    if problem == "board_3x2":
        assert torch.equal(y, board_3x2_labels(x.double()))


def test_stratified_80_20_split_keeps_the_class_proportions() -> None:
    dm = ToyDataModule("disc", num_samples=1000, val_fraction=0.0, test_fraction=0.2, stratify=True, seed=0)
    dm.setup()
    labels = dm.generate()[1]
    counts = torch.bincount(labels)
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes["val"] == 0 and sizes["train"] + sizes["test"] == 1000
    test_counts = torch.bincount(labels[dm.splits["test"].indices], minlength=2)
    assert test_counts.tolist() == [round(0.2 * int(n)) for n in counts]  # per class, not overall
    train_ids, test_ids = set(dm.splits["train"].indices.tolist()), set(dm.splits["test"].indices.tolist())
    assert not train_ids & test_ids and len(train_ids | test_ids) == 1000
