import math

import pytest
import torch

from gmnn.data import REGRESSION_PROBLEMS, ToyRegressionDataModule
from gmnn.data.regression import piecewise


@pytest.mark.parametrize("problem", REGRESSION_PROBLEMS)
def test_shapes_reproducibility_and_loaders(problem: str) -> None:
    dm = ToyRegressionDataModule(problem, num_samples=200, batch_size=32, seed=1)
    x, y = dm.generate()
    assert x.shape == (200, 1) and y.shape == (200, 1) and y.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(y, ToyRegressionDataModule(problem, num_samples=200, seed=1).generate()[1])
    assert dm.input_shape == [1] and dm.num_classes == 1
    dm.setup()
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, 1) and yb.shape == (32, 1)


def test_sine_noise_has_the_requested_spread() -> None:
    x, y = ToyRegressionDataModule("sine", num_samples=20000, noise=0.2).generate()
    residual = y - torch.sin(2 * math.pi * x)
    assert residual.mean().abs() < 0.01 and residual.std().item() == pytest.approx(0.2, abs=0.01)


def test_piecewise_values_hand_checked() -> None:
    x, y = piecewise(5000, 0.0, torch.Generator().manual_seed(0))
    assert (x < -1 / 3).any() and (x > 1 / 3).any()
    # the three pieces, exactly
    low, mid, high = x < -1 / 3, (x >= -1 / 3) & (x < 1 / 3), x >= 1 / 3
    torch.testing.assert_close(y[low], -1 - x[low])
    torch.testing.assert_close(y[mid], 3 * x[mid] ** 2)
    torch.testing.assert_close(y[high], 1 - 2 * x[high])


def test_unknown_problem_is_refused() -> None:
    with pytest.raises(ValueError, match="problem must be one of \\('sine', 'piecewise'\\)"):
        ToyRegressionDataModule("checkerboard")


def test_regression_moe_learns_the_piecewise_toy() -> None:
    from gmnn.models import RegressionMoE
    from tests.conftest import tiny_trainer

    dm = ToyRegressionDataModule("piecewise", num_samples=1200, noise=0.05, batch_size=64)
    model = RegressionMoE(input_shape=dm.input_shape, num_classes=dm.num_classes, num_experts=3, lr=0.01)
    before = tiny_trainer().test(model, dm, verbose=False)[0]["test/loss"]
    tiny_trainer(max_epochs=10).fit(model, dm)
    after = tiny_trainer().test(model, dm, verbose=False)[0]["test/loss"]
    assert after < before - 0.5
