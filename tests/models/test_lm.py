"""MoETransformerLM: learns beyond any context-free model, every configs/lm YAML runs through the CLI."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import yaml
import torch

from gmnn.cli import make_cli
from gmnn.data import MixedSourceTextDataModule
from gmnn.models import MoEModule, MoETransformerLM
from tests.conftest import tiny_trainer

ROOT = Path(__file__).resolve().parents[2]
LM_CONFIGS = sorted((ROOT / "configs" / "lm").rglob("*.yaml"))  # configs/lm/scaled/ too
SMALL_DATA = dict(seq_len=32, num_train=512, num_val=32, source_bytes=6000, min_segment=8, max_segment=24, batch_size=16)
# the routers of issue 14 (sigmoid, expert choice, shared experts, a top-1 router that learns from the task loss)
NEEDS_ROUTERS = pytest.mark.skipif(importlib.util.find_spec("gmnn.nn.moe.routers") is None, reason="needs gmnn.nn.moe.routers")
SMALL_MODEL = dict(input_shape=[32], d_model=32, num_layers=2, num_heads=2, expert_hidden=64, num_experts=4)


def _entropy_nats(values: torch.Tensor) -> float:
    p = torch.bincount(values.flatten(), minlength=256).double()
    p = p / p.sum()
    return float(-torch.special.xlogy(p, p).sum())


def test_learns_to_use_context() -> None:
    data = MixedSourceTextDataModule(**SMALL_DATA)
    data.setup()
    # Any predictor that ignores the context predicts one fixed distribution q for every byte; its
    # cross-entropy on the validation bytes is H(p) + KL(p || q) >= H(p), the entropy of the validation
    # bytes' own frequencies (about 3.5 nats here; ln 256 = 5.55 at initialisation). Beating it needs the context.
    context_free_bound = _entropy_nats(data.splits["val"].tensors[1])
    model = MoETransformerLM(**SMALL_MODEL, lr=1e-2)
    trainer = tiny_trainer(max_epochs=4)
    trainer.fit(model, data)
    assert trainer.callback_metrics["val/loss"].item() < context_free_bound - 0.1
    assert trainer.callback_metrics["val/bits_per_byte"].item() == pytest.approx(
        trainer.callback_metrics["val/loss"].item() / math.log(2), rel=1e-5)


def test_causal() -> None:
    """A byte's logits do not depend on later bytes (token-choice routing is per token)."""
    model = MoETransformerLM(**SMALL_MODEL).eval()
    tokens = torch.randint(0, 256, (1, 32))
    changed = tokens.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % 256
    with torch.no_grad():
        before, after = model(tokens)[0], model(changed)[0]
    assert torch.allclose(before[0, :20], after[0, :20], atol=1e-6)
    assert not torch.allclose(before[0, 20:], after[0, 20:])


@pytest.mark.parametrize(
    "options",
    [dict(router="softmax", k=1), dict(router="softmax", shared_experts=1), dict(router="sigmoid", balance_rate=0.01),
     dict(router="expert_choice"), dict(router="softmax", capacity_factor=1.25)],
    ids=["top1", "shared", "sigmoid_aux_free", "expert_choice", "capacity"],
)
@NEEDS_ROUTERS
def test_router_settings_route_every_layer(options: dict) -> None:
    model = MoETransformerLM(**SMALL_MODEL, **options)
    tokens = torch.randint(0, 256, (2, 32))
    logits, aux = model(tokens)
    assert logits.shape == (2, 32, 256) and torch.isfinite(aux)
    (logits.logsumexp(-1).mean() + aux).backward()
    for block in model.blocks:
        assert block.ffn.last_routing.probs.shape == (64, 4)
        assert block.ffn.router.weight.grad is not None and block.ffn.router.weight.grad.abs().sum() > 0


@NEEDS_ROUTERS
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = MoETransformerLM(**SMALL_MODEL, router="sigmoid", balance_rate=0.01)
    trainer = tiny_trainer(max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, MixedSourceTextDataModule(**{**SMALL_DATA, "num_train": 16}))
    trainer.save_checkpoint(tmp_path / "lm.ckpt")
    loaded = MoETransformerLM.load_from_checkpoint(tmp_path / "lm.ckpt")
    assert type(loaded) is MoETransformerLM and loaded.hparams.router == "sigmoid"
    assert type(MoEModule.load_from_checkpoint(tmp_path / "lm.ckpt")) is MoETransformerLM  # the entry of every gmnn checkpoint
    tokens = torch.randint(0, 256, (1, 32))
    model.eval(), loaded.eval()
    assert torch.allclose(model(tokens)[0], loaded(tokens)[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(router="hash"), "router"), (dict(k=5), "k"), (dict(num_heads=3), "num_heads"),
     (dict(input_shape=[4, 4]), "input_shape"), (dict(balance_weight=-1.0), "balance_weight"), (dict(lr=0), "lr")],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MoETransformerLM(**kwargs)


def test_rejects_bad_batches() -> None:
    model = MoETransformerLM(**SMALL_MODEL)
    with pytest.raises(ValueError, match="tokens"):
        model(torch.randint(0, 256, (2, 33)))
    with pytest.raises(ValueError, match="num_classes"):
        model.shared_step((torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 300)), "train")


@pytest.mark.parametrize(
    "config", [c if c.stem == "top2_switch" else pytest.param(c, marks=NEEDS_ROUTERS) for c in LM_CONFIGS
               # a 2-process config would relaunch pytest itself; tests/test_expert_parallel_cli.py runs it as a command
               if yaml.safe_load(c.read_text()).get("trainer", {}).get("devices", 1) == 1],
    ids=lambda p: str(p.relative_to(ROOT / "configs" / "lm").with_suffix("")))
def test_lm_config_runs_fast_dev_run(config: Path, tmp_path: Path) -> None:
    small = [f"--data.init_args.{key}={value}" for key, value in SMALL_DATA.items() if key != "num_train"]
    cli = make_cli(["fit", "--config", str(config), "--trainer.fast_dev_run=2", f"--trainer.logger.init_args.save_dir={tmp_path}",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *small])
    metrics = cli.trainer.callback_metrics
    assert isinstance(cli.model, MoETransformerLM)
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    assert "val/routing/blocks.0.ffn/mutual_information" in metrics
    assert "train/routing/blocks.1.ffn/stability" in metrics
