"""RegressionMoE: Gaussian mixture of experts' means, dense and top-k."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.models import RegressionMoE
from gmnn.models.regression import gaussian_log_likelihood
from tests.conftest import tiny_trainer

COMMON = dict(input_shape=[1], num_classes=1, num_experts=3, expert_hidden=[16], gate_hidden=[16])


def test_gaussian_log_likelihood_hand_value() -> None:
    y = torch.tensor([[1.0]])
    means = torch.tensor([[[1.0], [3.0]]])
    log_sigma = torch.tensor([[0.0, math.log(2.0)]])
    expected = torch.tensor([[-0.5 * math.log(2 * math.pi), -0.5 - math.log(2.0) - 0.5 * math.log(2 * math.pi)]])
    torch.testing.assert_close(gaussian_log_likelihood(y, means, log_sigma), expected)


def test_dense_loss_is_the_mixture_nll_and_prediction_the_mixture_mean() -> None:
    model = RegressionMoE(**COMMON)
    x, y = torch.randn(5, 1), torch.randn(5, 1)
    out = model(x)
    means = model.experts(x)[0]
    g = out.gate_probs
    torch.testing.assert_close(out.mean, (g.unsqueeze(-1) * means).sum(1))
    density = (g * torch.exp(-0.5 * (y - means[..., 0]) ** 2) / math.sqrt(2 * math.pi)).sum(-1)
    torch.testing.assert_close(model.loss_terms(out, x, y)["nll"], -density.log().mean())


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_computes_routed_experts_and_trains_the_gate(k: int) -> None:
    model = RegressionMoE(k=k, **COMMON)
    model.train()
    x, y = torch.randn(16, 1), torch.randn(16, 1)
    out = model(x)
    assert out.expert_means.shape == (16, k, 1) and out.selected.shape == (16, k)
    terms = model.loss_terms(out, x, y)
    assert ("gate" in terms) == (k == 1)
    torch.stack(list(terms.values())).sum().backward()
    assert sum(float(p.grad.abs().sum()) for p in model.gate.parameters()) > 0
    routed = set(out.selected.flatten().tolist())
    for e in range(3):
        grad = sum(float(p.grad.abs().sum()) for p in model.experts[e].parameters() if p.grad is not None)
        assert (grad > 0) == (e in routed)


def test_zero_gate_weight_gives_finite_loss_and_gradients() -> None:
    model = RegressionMoE(**COMMON)
    with torch.no_grad():
        model.gate.head.bias.copy_(torch.tensor([1e4, -1e4, -1e4]))
    x, y = torch.randn(4, 1), torch.randn(4, 1) * 100
    loss = model.loss_terms(model(x), x, y)["nll"]
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_learns_a_piecewise_function_and_round_trips(tmp_path: Path) -> None:
    x = torch.rand(1200, 1) * 2 - 1
    y = torch.where(x < -1 / 3, -1.0, torch.where(x < 1 / 3, 1.0, 0.0)) + 0.05 * torch.randn(1200, 1)
    data = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = RegressionMoE(lr=0.01, **COMMON)
    trainer = tiny_trainer(max_epochs=15)
    trainer.fit(model, data)
    model.eval()
    mse = float(((model(x).mean - y) ** 2).mean())
    assert mse < 0.1 * float(y.var()), f"mse {mse:.3f} vs target variance {float(y.var()):.3f}"
    trainer.save_checkpoint(tmp_path / "r.ckpt")
    loaded = RegressionMoE.load_from_checkpoint(tmp_path / "r.ckpt").eval()
    torch.testing.assert_close(loaded(x).mean, model(x).mean)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k": 4}, "k must be"), ({"k": -1}, "k must be"), ({"init_sigma": 0.0}, "init_sigma"),
     ({"regularizers": {"ideal_gate": 1.0}}, "regularizers of RegressionMoE")],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RegressionMoE(**{**COMMON, **kwargs})


def test_integer_targets_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="regression targets must be floats"):
        RegressionMoE(**COMMON).check_first_batch(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), "train")


def test_regression_config_fits_from_the_command_line(tmp_path: Path) -> None:
    from gmnn.cli import make_cli

    root = Path(__file__).resolve().parents[2]
    cli = make_cli(
        ["fit", "--config", str(root / "configs/regression/piecewise.yaml"), "--trainer.max_epochs=2",
         "--data.init_args.num_samples=400", "--model.init_args.k=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
         "--trainer.enable_progress_bar=false"]
    )
    metrics = cli.trainer.callback_metrics
    assert {"val/mse", "val/sample_entropy", "val/expert_usage", "train/loss_gate"} <= set(metrics)
    assert (Path(cli.trainer.logger.log_dir) / "checkpoints" / "last.ckpt").exists()
