"""The paper's specialization methods as options of MoETransformerLM: the routers they build, the
temperature schedule, the hard-EM allocation (E-step checked against its definition), and a tiny LM
training with each option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gmnn.data import MixedSourceTextDataModule
from gmnn.models import MoETransformerLM
from gmnn.nn import AttentionRouter, TemperatureSoftmaxRouter
from tests.conftest import tiny_trainer
from tests.models.test_lm import SMALL_DATA, SMALL_MODEL, _entropy_nats

METHODS = {
    "similarity": dict(similarity_same=1.0, similarity_different=1.0, similarity_pairs=256),
    "attention_learned": dict(router="attention"),
    "attention_expert_hidden": dict(router="attention", attention_keys="expert_hidden"),
    "dual_temperature": dict(router_temperature=1.0, expert_temperature=4.0, temperature_decay=0.5, temperature_min=1.0),
    "annealed_temperature": dict(router_temperature=2.0, temperature_decay=0.5, temperature_min=0.5),
    "hard_em": dict(allocation_steps=4),
}


def test_options_build_the_routers_and_layer_terms() -> None:
    model = MoETransformerLM(**SMALL_MODEL, **METHODS["similarity"])
    assert model.blocks[0].ffn.similarity_same_weight == 1.0 and model.blocks[0].ffn.similarity_pairs == 256
    model = MoETransformerLM(**SMALL_MODEL, **METHODS["attention_expert_hidden"])
    router = model.blocks[1].ffn.router
    assert isinstance(router, AttentionRouter) and router.keys == "expert_hidden"
    assert router._experts[0] is model.blocks[1].ffn.experts
    model = MoETransformerLM(**SMALL_MODEL, **METHODS["dual_temperature"])
    router = model.blocks[0].ffn.router
    assert isinstance(router, TemperatureSoftmaxRouter) and router.dual and router.expert_temperature.item() == 4.0
    assert type(MoETransformerLM(**SMALL_MODEL).blocks[0].ffn.router).__name__ == "SoftmaxTopKRouter"


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(router="sigmoid", router_temperature=2.0), "temperatures"), (dict(router="attention", attention_keys="x"), "attention_keys"),
     (dict(similarity_same=-1.0), "similarity_same"), (dict(similarity_pairs=0), "similarity_pairs"),
     (dict(allocation_steps=-1), "allocation_steps"), (dict(router="expert_choice", allocation_steps=2), "allocation_steps"),
     (dict(expert_temperature=0.0), "temperature"), (dict(router_temperature=0.5, temperature_decay=1.0, temperature_min=1.0), "temperature_min")],
)
def test_invalid_method_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MoETransformerLM(**SMALL_MODEL, **kwargs)


def test_temperature_schedule_by_hand() -> None:
    """decay 0.5 from 4: T_0 = 4, T_1 = 4 / (1 + 0) = 4, T_2 = 4 / (1 + 0.5) = 8 / 3; the floor 1 stops it."""
    model = MoETransformerLM(**SMALL_MODEL, **METHODS["dual_temperature"])
    assert [model.annealed_temperature(e) for e in range(3)] == pytest.approx([4.0, 4.0, 8 / 3])
    assert model.annealed_temperature(10) == 1.0
    data = MixedSourceTextDataModule(**{**SMALL_DATA, "num_train": 32})
    trainer = tiny_trainer(max_epochs=3, limit_val_batches=0)
    trainer.fit(model, data)
    for block in model.blocks:  # set at the start of the last epoch (2)
        assert block.ffn.router.expert_temperature.item() == pytest.approx(8 / 3)
        assert block.ffn.router.temperature.item() == 1.0


def test_expert_losses_match_their_definition() -> None:
    """Column e of layer l's E-step losses = the per-token loss with layer l's tokens all on expert e alone."""
    torch.manual_seed(0)
    model = MoETransformerLM(**SMALL_MODEL, k=2).train()
    tokens, targets = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    losses = model.expert_losses(tokens, targets)
    assert len(losses) == 2 and losses[0].shape == (64, 4) and model.training
    model.eval()
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            for expert in range(4):
                selected = torch.full((64, 2), expert)
                block.ffn.assign(selected, torch.tensor([[1.0, 0.0]]).expand(64, 2))
                logits = model(tokens)[0]
                nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                assert torch.allclose(losses[layer][:, expert], nll, atol=1e-5)


def test_allocation_step_routes_by_lowest_loss_and_fits_the_router() -> None:
    torch.manual_seed(0)
    model = MoETransformerLM(**SMALL_MODEL, k=1, allocation_steps=2, allocation_weight=1.0)
    model.log = lambda *args, **kwargs: None  # outside a Trainer
    tokens, targets = torch.randint(0, 256, (2, 32)), torch.randint(0, 256, (2, 32))
    torch.manual_seed(1)
    expected = [loss.argmin(-1) for loss in model.expert_losses(tokens, targets)]
    torch.manual_seed(1)
    loss = model.allocation_step((tokens, targets))
    for block, best in zip(model.blocks, expected):
        assert torch.equal(block.ffn.last_routing.selected[:, 0], best)
        assert torch.allclose(block.ffn.last_routing.weights, torch.ones(64, 1))
    loss.backward()
    for block in model.blocks:
        assert block.ffn.router.weight.grad.abs().sum() > 0
    with_fit = [block.ffn.router.weight.grad.clone() for block in model.blocks]
    model.zero_grad()
    model.hparams.allocation_weight = 0.0  # without the fit term the router learns less (the balance / z terms only)
    torch.manual_seed(1)
    model.allocation_step((tokens, targets)).backward()
    for block, grad in zip(model.blocks, with_fit):
        assert not torch.allclose(block.ffn.router.weight.grad, grad)


@pytest.mark.parametrize("method", list(METHODS))
def test_tiny_lm_trains_with_each_method(method: str) -> None:
    torch.manual_seed(0)
    data = MixedSourceTextDataModule(**SMALL_DATA)
    data.setup()
    context_free_bound = _entropy_nats(data.splits["val"].tensors[1])
    model = MoETransformerLM(**SMALL_MODEL, lr=1e-2, **METHODS[method])
    trainer = tiny_trainer(max_epochs=4)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["val/loss"]) and metrics["val/loss"].item() < context_free_bound - 0.1
    if method == "hard_em":
        assert "train/allocation_fit" in metrics and model.global_step > METHODS[method]["allocation_steps"]


def test_sweep_runs_the_method_configs(tmp_path, monkeypatch) -> None:
    """``scripts/lm_sweep.py --methods`` runs every method config (each exists) beside its baselines."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("lm_sweep", root / "scripts" / "lm_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    assert all((root / "configs" / "lm" / f"{name}.yaml").exists() for name in (*sweep.METHODS, *sweep.METHOD_BASELINES))
    calls = []
    monkeypatch.setattr(sweep, "run_one", lambda config, seed, out, extra: calls.append((config.stem, seed, extra)) or {
        "val_loss": 0.0, "wall_s": 0.0})
    sweep.main(["--methods", "--seeds", "0", "--out", str(tmp_path), "--set", "trainer.max_epochs=1"])
    assert [c[0] for c in calls] == [*sweep.METHOD_BASELINES, *sweep.METHODS]
    assert calls[0][2] == ["--trainer.max_epochs=1"]


def test_sweep_analysis_measures_the_router_as_the_routing_report_does(tmp_path) -> None:
    """``lm_sweep.py --analyze`` on a saved run: per layer and labelling the router's information equals
    ``routing_report``'s I(top-1 expert; label) on the same validation tokens (an independent path: RoutingStats),
    and the table and the figure are written."""
    import importlib.util
    from pathlib import Path

    import yaml

    from gmnn.analysis import routing_report
    from gmnn.data import MixedSourceTextDataModule, byte_classes
    from gmnn.models import MoETransformerLM
    from gmnn.pl import Trainer

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("lm_sweep", root / "scripts" / "lm_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    settings = dict(seq_len=32, num_train=64, num_val=16, source_bytes=6000, min_segment=8, max_segment=24, batch_size=16)
    folder = tmp_path / "top2_switch" / "seed0"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"class_path": "gmnn.data.MixedSourceTextDataModule",
                                                                  "init_args": settings}}))
    torch.manual_seed(0)
    data = MixedSourceTextDataModule(**settings)
    model = MoETransformerLM(input_shape=[32], d_model=16, num_layers=2, num_heads=2, expert_hidden=16, num_experts=4)
    trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, data)
    trainer.save_checkpoint(folder / "checkpoints" / "last.ckpt")
    result = sweep.analyze_run(folder, probe_batches=2)
    assert set(result) == {"blocks.0.ffn", "blocks.1.ffn"}
    for labelling, label_fn in [("source", lambda batch: batch[2]), ("byte_class", lambda batch: byte_classes(batch[0]))]:
        rows, _ = routing_report(model, data.val_dataloader(), label_fn=label_fn, num_labels=sweep.LABELLINGS[labelling])
        for row in rows:
            assert result[row.layer][labelling]["router"] == pytest.approx(row.mutual_information, abs=1e-5)
            assert 0.0 <= result[row.layer][labelling]["probe"] <= result[row.layer][labelling]["label_entropy"] + 1e-6
    table = sweep.probe_table(tmp_path, ["top2_switch"])
    assert "| top2_switch | 1 |" in table and "source: router / probe, blocks.0.ffn" in table
    sweep.probe_plot(tmp_path, ["top2_switch"], tmp_path / "probe.png")
    assert (tmp_path / "probe.png").stat().st_size > 10_000
