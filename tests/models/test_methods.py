"""The training methods' LightningModules: losses, optimizers, routing, reuse, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.data import ToyDataModule
from gmnn.models import (
    AttentionGateMoE,
    DenseMoE,
    DualTemperatureMoE,
    ExpertLossGateMoE,
    GatelessMoE,
    MoEModule,
    SingleModel,
    StochasticMoE,
    TopKMoE,
)
from gmnn.nn.functional.combine import dense_mixture
from gmnn.nn.functional.losses import entropy, per_expert_nll, stochastic_mixture_loss
from gmnn.nn.functional.regularizers import importance_loss, sample_distances, sample_similarity_terms
from gmnn.nn.functional.temperature import scheduled_temperature
from tests.conftest import tiny_trainer

COMMON = dict(input_shape=[2], num_classes=3, num_experts=4, expert_hidden=[8], gate_hidden=[8])


def _data(n: int = 64, batch: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 2), torch.randint(0, 3, (n,))), batch_size=batch)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# ------------------------------------------------------------------ regularizers in a model
def test_regularizer_terms_are_weighted_and_reach_the_gate() -> None:
    model = DenseMoE(regularizers={"importance": 0.5, "similarity_same": 0.1, "similarity_different": 0.2, "z_loss": 0.01}, **COMMON)
    model.train()
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    out = model(x)
    terms = model.loss_terms(out, x, y)
    assert set(terms) == {"nll", "importance", "similarity_same", "similarity_different", "z_loss"}
    torch.testing.assert_close(terms["importance"], 0.5 * importance_loss(out.gate_probs))
    same, different = sample_similarity_terms(out.gate_probs, sample_distances(x))
    torch.testing.assert_close(terms["similarity_different"], -0.2 * different)
    torch.testing.assert_close(terms["similarity_same"], 0.1 * same)
    grad = torch.autograd.grad(terms["importance"], list(model.gate.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grad)
    model.eval()
    assert set(model.loss_terms(model(x), x, y)) == {"nll"}, "regularizers apply to training only"


def test_regularizers_and_temperature_are_logged_during_fit() -> None:
    model = DenseMoE(regularizers={"importance": 0.2, "load_balancing": 0.1, "ideal_gate": 1.0}, temperature=2.0,
                     temperature_decay=0.5, temperature_min=0.1, **COMMON)
    trainer = tiny_trainer(max_epochs=4, limit_val_batches=0)
    trainer.fit(model, _data())
    metrics = trainer.callback_metrics
    for name in ("importance", "load_balancing", "ideal_gate"):
        assert torch.isfinite(metrics[f"train/reg/{name}"])
    # epoch 3 (the last): 2 / (1 * 1.5 * 2)
    assert metrics["train/temperature"].item() == pytest.approx(2.0 / 3.0)
    assert model.temperature == pytest.approx(scheduled_temperature(3, 2.0, 0.5, 0, 0.1))


def test_temperature_is_restored_from_the_checkpoint_epoch(tmp_path: Path) -> None:
    model = DenseMoE(temperature=2.0, temperature_decay=0.5, temperature_min=0.1, **COMMON)
    trainer = tiny_trainer(max_epochs=4, limit_val_batches=0)
    trainer.fit(model, _data())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = MoEModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.temperature == pytest.approx(model.temperature) and loaded.temperature < 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"regularizers": {"importance": -0.1}}, "importance"),
        ({"regularizers": {"smoothness": 0.1}}, "regularizers key"),
        ({"regularizers": {"similarity_same": 1e-3}, "sample_distance": None}, "sample_distance"),
        ({"sample_distance": "manhattan"}, "sample_distance"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": 1.0, "temperature_decay": 0.1, "temperature_min": 2.0}, "temperature_min"),
        ({"temperature_decay": -1.0}, "temperature_decay"),
        ({"allocation_temperature": 0.0}, "allocation_temperature"),
        ({"init_experts_from": "/nonexistent.ckpt"}, "init_experts_from"),
    ],
)
def test_bad_method_arguments_fail_at_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DenseMoE(**{**COMMON, **kwargs})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DualTemperatureMoE(expert_temperature=0.0, **COMMON), "temperature"),
        (lambda: DualTemperatureMoE(freeze_experts=True, **COMMON), "freeze_experts"),
        (lambda: GatelessMoE(allocation="random", **COMMON), "allocation"),
        (lambda: GatelessMoE(allocation_noise=-0.1, **COMMON), "allocation_noise"),
        (lambda: SingleModel(matched_experts=0, **COMMON), "matched_experts"),
    ],
)
def test_bad_variant_arguments_fail(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------------------------------------- stochastic
def test_stochastic_moe_samples_while_training_and_uses_the_mixture_loss() -> None:
    model = StochasticMoE(**COMMON)
    x, y = torch.randn(400, 2), torch.randint(0, 3, (400,))
    model.eval()
    out = model(x)
    assert torch.equal(out.selected[:, 0], out.gate_probs.argmax(-1))
    torch.testing.assert_close(out.log_probs, out.chosen_expert_log_probs())
    model.train()
    out = model(x)
    assert not torch.equal(out.selected[:, 0], out.gate_probs.argmax(-1)), "training must sample, not take the argmax"
    chosen = out.expert_log_probs[torch.arange(400), out.selected[:, 0]]
    torch.testing.assert_close(out.log_probs, chosen)
    loss = model.loss_terms(out, x, y)["nll"]
    expected = stochastic_mixture_loss(out.gate_probs.log(), per_expert_nll(out.expert_log_probs, y))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gate.parameters() if p.dim() > 1)
    assert all(model.experts[e].head.weight.grad.abs().sum() > 0 for e in range(4))


# --------------------------------------------------------------------- dual temperature
def test_dual_temperature_optimizers_touch_only_their_own_parameters() -> None:
    model = DualTemperatureMoE(expert_temperature=5.0, regularizers={"importance": 0.1}, **COMMON)
    model.train()
    gate_opt, expert_opt = model.configure_optimizers()
    gate_ids = {id(p) for group in gate_opt.param_groups for p in group["params"]}
    expert_ids = {id(p) for group in expert_opt.param_groups for p in group["params"]}
    assert gate_ids.isdisjoint(expert_ids) and gate_ids | expert_ids == {id(p) for p in model.parameters()}
    assert expert_ids == {id(p) for p in model.experts.parameters()}
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))

    expert_loss, gate_terms, _ = model.dual_losses(x, y)
    gate_before, experts_before = _params(model.gate), _params(model.experts)
    sum(gate_terms.values()).backward()
    assert all(p.grad is None for p in model.experts.parameters()), "the gate loss reached the experts"
    gate_opt.step()
    assert _changed(gate_before, model.gate) and not _changed(experts_before, model.experts)

    gate_opt.zero_grad()
    gate_before = _params(model.gate)
    expert_loss.backward()
    assert all(p.grad is None for p in model.gate.parameters()), "the expert loss reached the gate"
    expert_opt.step()
    assert _changed(experts_before, model.experts) and not _changed(gate_before, model.gate)


def test_dual_temperature_expert_loss_uses_the_high_temperature() -> None:
    model = DualTemperatureMoE(expert_temperature=5.0, **COMMON)
    x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    expert_loss, gate_terms, out = model.dual_losses(x, y)
    flat = torch.log_softmax(out.gate_logits / 5.0, -1)
    expected = torch.nn.functional.nll_loss(dense_mixture(flat, out.expert_log_probs), y)
    torch.testing.assert_close(expert_loss, expected)
    sharp = torch.log_softmax(out.gate_logits, -1)
    torch.testing.assert_close(gate_terms["nll"], torch.nn.functional.nll_loss(dense_mixture(sharp, out.expert_log_probs), y))


def test_dual_temperature_trains_with_manual_optimization() -> None:
    model = DualTemperatureMoE(expert_temperature=4.0, temperature_decay=1.0, temperature_min=1.0, **COMMON)
    gate_before, experts_before = _params(model.gate), _params(model.experts)
    trainer = tiny_trainer(max_epochs=3, limit_val_batches=0)
    trainer.fit(model, _data())
    assert trainer.global_step == 2 * 3 * 4  # two optimizer steps per batch
    assert _changed(gate_before, model.gate) and _changed(experts_before, model.experts)
    # epochs 0, 1: 4; epoch 2: 4 / (1 + 1) = 2
    assert trainer.callback_metrics["train/expert_temperature"].item() == pytest.approx(2.0)
    assert trainer.callback_metrics["train/temperature"].item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------- gate-less
def test_gateless_moe_has_no_gate_and_allocates_by_loss() -> None:
    model = GatelessMoE(temperature=1e-3, **COMMON)
    assert model.gate is None
    x, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    out = model(x)
    torch.testing.assert_close(out.gate_probs.argmax(-1), entropy(out.expert_log_probs).argmin(-1))
    weights = model.allocate(out.expert_log_probs, y).exp()
    losses = per_expert_nll(out.expert_log_probs, y)
    assert torch.equal(weights.argmax(-1), losses.argmin(-1))
    nll = model.loss_terms(out, x, y)["nll"]
    best = losses.min(-1).values.mean()
    assert nll.item() == pytest.approx(best.item(), abs=1e-3)  # at T -> 0 the loss is the best expert's


def test_distilled_gate_reproduces_the_gateless_allocation(tmp_path: Path) -> None:
    data = ToyDataModule("checkerboard", num_samples=2000, batch_size=64, seed=0)
    common = dict(input_shape=[2], num_classes=2, num_experts=4, expert_hidden=[8], gate_hidden=[32], lr=0.01)
    gateless = GatelessMoE(allocation="entropy", temperature=0.1, allocation_noise=0.1, **common)
    trainer = tiny_trainer(max_epochs=8, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(gateless, data)
    trainer.save_checkpoint(tmp_path / "gateless.ckpt")
    distilled = DenseMoE(
        init_experts_from=str(tmp_path / "gateless.ckpt"), freeze_experts=True,
        regularizers={"entropy_allocation": 1.0}, allocation_temperature=0.1, **common,
    )
    tiny_trainer(max_epochs=10, num_sanity_val_steps=0, limit_val_batches=0).fit(distilled, data)
    x, _ = data.splits["train"][:]
    distilled.eval()
    with torch.no_grad():
        out = distilled(x)
        allocation = gateless.eval()(x).gate_probs.argmax(-1)
    for a, b in zip(gateless.experts.parameters(), distilled.experts.parameters()):
        torch.testing.assert_close(a, b)  # experts frozen
    agreement = (out.gate_probs.argmax(-1) == allocation).float().mean().item()
    print(f"distilled gate argmax agreement with the gate-less allocation: {agreement:.4f}")
    assert agreement >= 0.9, f"argmax agreement {agreement:.3f}"


# ---------------------------------------------------------------------- expert-loss gate
def test_expert_loss_gate_regresses_losses_and_routes_to_the_argmin() -> None:
    model = ExpertLossGateMoE(**COMMON)
    model.train()
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    out = model(x)
    terms = model.loss_terms(out, x, y)
    predicted = model.gate(x)[0]
    torch.testing.assert_close(terms["loss_prediction"], torch.nn.functional.mse_loss(predicted, per_expert_nll(out.expert_log_probs, y)))
    gate_grads = torch.autograd.grad(terms["nll"], list(model.gate.parameters()), allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in gate_grads), "the mixture loss must not train the gate"
    model.eval()
    out = model(x)
    assert torch.equal(out.selected[:, 0], predicted.argmin(-1))
    torch.testing.assert_close(out.log_probs, out.expert_log_probs[torch.arange(16), predicted.argmin(-1)])


def test_expert_loss_gate_learns_the_losses() -> None:
    model = ExpertLossGateMoE(lr=0.02, **COMMON)
    data = _data(256, 64)
    x, y = data.dataset.tensors
    model.train()
    before = model.loss_terms(model(x), x, y)["loss_prediction"].item()
    tiny_trainer(max_epochs=15, limit_val_batches=0).fit(model, data)
    model.train()
    after = model.loss_terms(model(x), x, y)["loss_prediction"].item()
    assert after < 0.3 * before, (before, after)


# ------------------------------------------------------------------------ reusing experts
def _fit_and_save(model: MoEModule, path: Path) -> str:
    trainer = tiny_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, _data())
    trainer.save_checkpoint(path)
    return str(path)


def test_experts_are_reused_from_an_attention_checkpoint_frozen(tmp_path: Path) -> None:
    source = AttentionGateMoE(**COMMON)
    path = _fit_and_save(source, tmp_path / "attention.ckpt")
    model = TopKMoE(k=2, init_experts_from=path, freeze_experts=True, **COMMON)
    for a, b in zip(source.experts.parameters(), model.experts.parameters()):
        torch.testing.assert_close(a, b)
    gate_before = _params(model.gate)
    _fit_and_save(model, tmp_path / "topk.ckpt")
    for a, b in zip(source.experts.parameters(), model.experts.parameters()):
        torch.testing.assert_close(a, b)
    assert _changed(gate_before, model.gate)
    # the new checkpoint is a normal TopKMoE that loads without the source
    (tmp_path / "attention.ckpt").unlink()
    loaded = MoEModule.load_from_checkpoint(tmp_path / "topk.ckpt")
    assert type(loaded) is TopKMoE and not any(p.requires_grad for p in loaded.experts.parameters())
    x = torch.randn(5, 2)
    torch.testing.assert_close(loaded.eval()(x).log_probs, model.eval()(x).log_probs)


def test_reused_experts_can_be_fine_tuned(tmp_path: Path) -> None:
    path = _fit_and_save(DenseMoE(**COMMON), tmp_path / "dense.ckpt")
    model = DenseMoE(init_experts_from=path, **COMMON)
    before = _params(model.experts)
    _fit_and_save(model, tmp_path / "tuned.ckpt")
    assert _changed(before, model.experts)


@pytest.mark.parametrize(
    "other", [{"num_experts": 3}, {"expert_hidden": [16]}, {"expert_hidden": [8, 8]}], ids=["count", "width", "depth"]
)
def test_reusing_experts_of_another_architecture_is_a_clear_error(other: dict, tmp_path: Path) -> None:
    path = _fit_and_save(DenseMoE(**{**COMMON, **other}), tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="init_experts_from.*another count or architecture"):
        DenseMoE(init_experts_from=path, **COMMON)


# ------------------------------------------------------------------------------ single
def test_single_model_matches_the_mixture_parameter_count_and_learns() -> None:
    mixture = DenseMoE(input_shape=[2], num_classes=2, num_experts=4, expert_hidden=[32, 32], gate_hidden=[32])
    single = SingleModel(input_shape=[2], num_classes=2, matched_experts=4, expert_hidden=[32, 32], gate_hidden=[32], lr=0.01)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert single.gate is None and single.num_experts == 1
    assert abs(count(single) - count(mixture)) / count(mixture) < 0.05
    out = single(torch.randn(4, 2))
    torch.testing.assert_close(out.gate_probs, torch.ones(4, 1))
    data = ToyDataModule("circles", num_samples=1000, batch_size=64, seed=0)
    trainer = tiny_trainer(max_epochs=5, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(single, data)
    assert trainer.test(single, data, verbose=False)[0]["test/acc"] >= 0.95
    explicit = SingleModel(hidden=[7], **COMMON)
    assert explicit.experts[0].body[0].out_features == 7
    assert math.isclose(count(explicit), 2 * 7 + 7 + 7 * 3 + 3)
