"""configs/paper/mnist/: one config per row of the reference's MNIST table, its protocol and its paper-mode options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.config_checks import fit_on_fake_mnist

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "paper" / "mnist").glob("*.yaml"))
ROWS = ["attention_importance", "attention_similarity", "dense", "importance", "sample_similarity", "single",
        "stochastic", "stochastic_loss_gate", "top1_loss_gate", "top1_stochastic"]
# the paper-mode options each row must set (what the reference computes), beside the shared protocol
PAPER_MODE = {
    "dense": {"objective": "softmax_of_mixture"},
    "importance": {"objective": "softmax_of_mixture", "importance_std": "unbiased"},
    "sample_similarity": {"objective": "softmax_of_mixture"},
    "attention_importance": {"objective": "softmax_of_mixture", "importance_std": "unbiased", "query_activation": "none"},
    "attention_similarity": {"objective": "softmax_of_mixture", "query_activation": "none"},
    "top1_stochastic": {"k": 1, "gate_gradient": "stochastic", "train_experts": "all"},
    "stochastic": {},
    "single": {},
    "top1_loss_gate": {"gate_loss": "l1_sum", "train_experts": "argmax"},
    "stochastic_loss_gate": {"gate_loss": "l1_sum", "train_experts": "sampled"},
}
# the reference betas, from the CSV row names (w_importance, w_sample_sim_same, w_sample_sim_diff)
REGULARIZERS = {
    "importance": {"importance": 0.2}, "attention_importance": {"importance": 0.2},
    "sample_similarity": {"similarity_same": 1e-6, "similarity_different": 1e-6},
    "attention_similarity": {"similarity_same": 1e-6, "similarity_different": 0.01},
}


def test_every_row_has_a_config() -> None:
    assert [p.stem for p in CONFIGS] == ROWS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_header_names_its_reference_row_and_sources(config: Path) -> None:
    text = config.read_text()
    assert "mnist_final_results.csv" in text and "original_moe_training.py line 64" in text
    assert f"gmnn fit --config configs/paper/mnist/{config.stem}.yaml" in text


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_paper_config_trains_with_the_reference_protocol(config: Path, tmp_path: Path) -> None:
    shipped = yaml.safe_load(config.read_text())
    assert shipped["data"]["init_args"]["batch_size"] == 512 and shipped["trainer"]["max_epochs"] == 20
    cli = fit_on_fake_mnist(config, tmp_path)
    (optimizer,) = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.Adam and not cli.trainer.lr_scheduler_configs  # constant lr
    assert optimizer.defaults["lr"] == 0.001 and optimizer.defaults["weight_decay"] == 0.001
    assert optimizer.defaults["decoupled_weight_decay"] is False  # L2, as torch.optim.Adam(weight_decay=wd)
    assert not any(type(c).__name__ == "InitSearch" for c in cli.trainer.callbacks)
    model = cli.model
    for key, value in PAPER_MODE[config.stem].items():
        assert model.hparams[key] == value, key
    assert model.regularizer_weights == REGULARIZERS.get(config.stem, {})
    expert = model.experts.experts[0]
    assert [m.out_features for m in expert.mlp.body if isinstance(m, torch.nn.Linear)] == [5, 32]
    if model.gate is not None:
        assert [m.out_features for m in model.gate.mlp.body if isinstance(m, torch.nn.Linear)] == [128, 32]
