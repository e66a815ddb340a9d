import pytest
import torch

from gmnn.data import PROBLEMS, ToyDataModule
from gmnn.data.toy import checkerboard


@pytest.mark.parametrize("problem", PROBLEMS)
def test_every_problem_is_reproducible_with_right_shapes_and_labels(problem: str) -> None:
    dm = ToyDataModule(problem, num_samples=300, seed=3)
    x, y = dm.generate()
    assert x.shape == (300, 2) and y.shape == (300,)
    assert set(y.unique().tolist()) == set(range(dm.num_classes))
    x2, y2 = ToyDataModule(problem, num_samples=300, seed=3).generate()
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, ToyDataModule(problem, num_samples=300, seed=4).generate()[0])


def test_checkerboard_labels_hand_checked() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = checkerboard(1000, 0.0, gen, cells=4)
    cell = ((x + 1) * 2).floor().long()
    assert torch.equal(y, (cell[:, 0] + cell[:, 1]) % 2)
    assert y.float().mean().sub(0.5).abs() < 0.05


def test_splits_have_requested_sizes_and_do_not_overlap() -> None:
    dm = ToyDataModule("circles", num_samples=1000, val_fraction=0.2, test_fraction=0.1, batch_size=50)
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 700, "val": 200, "test": 100}
    ids = [set(dm.splits[k].indices) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (50, 2) and yb.dtype == torch.int64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"problem": "spiral"}, "problem must be one of"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_samples": 0}, "num_samples"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "no training samples"),
        ({"noise": -0.1}, "noise"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ToyDataModule(**kwargs)
