"""``split_discs``, the first run's problem: 8 classes, two per disc, checked by hand."""

from __future__ import annotations

import math

import torch

from gmnn.data import ToyDataModule
from gmnn.data.toy import split_discs

# disc q: centre, and the hand-written test "is class 2q+1" (the side its normal at q * 45 degrees points to)
DISCS = [
    ((-0.5, -0.5), lambda x, y: x > -0.5),                    # normal (1, 0): right half
    ((0.5, -0.5), lambda x, y: (x - 0.5) + (y + 0.5) > 0),    # normal (1, 1) / sqrt 2: upper-right half
    ((-0.5, 0.5), lambda x, y: y > 0.5),                      # normal (0, 1): upper half
    ((0.5, 0.5), lambda x, y: -(x - 0.5) + (y - 0.5) > 0),    # normal (-1, 1) / sqrt 2: upper-left half
]


def test_each_disc_holds_its_two_classes_split_by_its_line() -> None:
    x, y = split_discs(4000, 0.0, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and y.dtype == torch.int64 and set(y.tolist()) == set(range(8))
    for q, ((cx, cy), upper) in enumerate(DISCS):
        inside = (x[:, 0] - cx) ** 2 + (x[:, 1] - cy) ** 2 <= 0.35**2 + 1e-6
        assert torch.equal(inside, y // 2 == q)  # every point is in its class's disc, and only there
        px, py = x[inside, 0], x[inside, 1]
        assert torch.equal(y[inside], 2 * q + upper(px, py).long())


def test_classes_are_balanced_and_the_discs_are_filled_uniformly() -> None:
    n = 16000
    x, y = split_discs(n, 0.0, torch.Generator().manual_seed(1))
    counts = torch.bincount(y, minlength=8).double()
    sigma = math.sqrt(n * (1 / 8) * (7 / 8))  # binomial spread of one class's count
    assert (counts - n / 8).abs().max() < 4 * sigma, counts
    # uniform on a disc of radius r: P(distance < r / 2) = 1/4
    centres = torch.tensor([c for c, _ in DISCS])[y // 2]
    near = ((x - centres).norm(dim=1) < 0.35 / 2).double().mean()
    assert abs(float(near) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_noise_moves_the_points_and_keeps_the_labels() -> None:
    clean, labels = split_discs(2000, 0.0, torch.Generator().manual_seed(2))
    noisy, noisy_labels = split_discs(2000, 0.1, torch.Generator().manual_seed(2))
    assert torch.equal(labels, noisy_labels)
    assert abs(float((noisy - clean).std()) - 0.1) < 0.005


def test_reproducible_from_the_seed_and_stratified_splits_take_each_class_in_its_fraction() -> None:
    first = ToyDataModule("split_discs", num_samples=2000, seed=5).generate()
    again = ToyDataModule("split_discs", num_samples=2000, seed=5).generate()
    other = ToyDataModule("split_discs", num_samples=2000, seed=6).generate()
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[0], other[0])
    data = ToyDataModule("split_discs", num_samples=2000, val_fraction=0.15, test_fraction=0.2, stratify=True, seed=5)
    data.setup("fit")
    labels = first[1]
    indices = {name: torch.as_tensor(split.indices) for name, split in data.splits.items()}
    assert sum(len(i) for i in indices.values()) == 2000 and len(torch.cat(list(indices.values())).unique()) == 2000
    for c in range(8):
        n_c = int((labels == c).sum())
        val, test = int((labels[indices["val"]] == c).sum()), int((labels[indices["test"]] == c).sum())
        assert (val, test) == (round(0.15 * n_c), round(0.2 * n_c)), c
        assert int((labels[indices["train"]] == c).sum()) == n_c - val - test
