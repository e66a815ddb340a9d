"""``gmnn fit`` with expert parallelism (configs/lm/expert_parallel.yaml) on 2 gloo CPU processes.

The reference is the same model under plain DDP with 2 processes (top2_switch.yaml: same model, same data
shards per rank): the per-step losses, the final weights and Adam's moments must agree, and a checkpoint
moves between the layouts (written by DDP, resumed expert-parallel, and the other way round).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmnn.models import MoETransformerLM
from tests.test_distributed import ROOT, run_gmnn

SMALL = ["--trainer.log_every_n_steps=1", "--trainer.limit_val_batches=2", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
         "--data.init_args.num_train=256", "--data.init_args.num_val=64", "--data.init_args.batch_size=8",
         "--data.init_args.seq_len=32", "--model.init_args.d_model=32", "--model.init_args.expert_hidden=32"]
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]


def _fit(config: str, cwd: Path, *extra: str) -> Path:
    cwd.mkdir(parents=True, exist_ok=True)
    run_gmnn(["fit", "--config", str(ROOT / "configs/lm" / config), *DDP, *SMALL, *extra], cwd=cwd)
    (run,) = (cwd / "runs" / "gmnn").iterdir()
    return run


def _losses(run: Path) -> list[float]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [event.value for event in events.Scalars("train/loss_step")]


def _checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        other = b["state_dict"][key]
        if key.endswith("attention.qkv.bias"):  # the key bias: gradient 0 in exact arithmetic (softmax shift),
            width = value.shape[0] // 3  # so Adam turns rounding noise into steps of ~lr: compare it loosely
            torch.testing.assert_close(value[width:2 * width], other[width:2 * width], rtol=0, atol=1e-4, msg=key)
            value, other = torch.cat([value[:width], value[2 * width:]]), torch.cat([other[:width], other[2 * width:]])
        torch.testing.assert_close(value, other, rtol=1e-4, atol=1e-5, msg=key)
    moments_a, moments_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert moments_a.keys() == moments_b.keys()
    for index, state in moments_a.items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[name], moments_b[index][name], rtol=1e-4, atol=1e-6, msg=f"{index}.{name}")


@pytest.mark.slow
def test_expert_parallel_fit_matches_ddp_and_checkpoints_cross_layouts(tmp_path: Path) -> None:
    ep = _fit("expert_parallel.yaml", tmp_path / "ep", "--trainer.max_steps=4")
    ddp = _fit("top2_switch.yaml", tmp_path / "ddp", "--trainer.max_steps=4")
    ep_losses, ddp_losses = _losses(ep), _losses(ddp)
    assert len(ep_losses) == 4, ep_losses
    torch.testing.assert_close(ep_losses, ddp_losses, rtol=1e-5, atol=1e-6)
    ep_ckpt, ddp_ckpt = _checkpoint(ep), _checkpoint(ddp)
    assert ep_ckpt["state_dict"]["blocks.0.ffn.experts.w1"].shape[0] == 4, "the checkpoint holds all experts"
    _assert_same_state(ep_ckpt, ddp_ckpt)
    single = MoETransformerLM.load_from_checkpoint(ep / "checkpoints" / "last.ckpt", map_location="cpu")  # P = 1
    for key, value in single.state_dict().items():
        torch.testing.assert_close(value, ep_ckpt["state_dict"][key], rtol=0, atol=0, msg=key)
    assert _losses(ep) and EventAccumulator(str(ep)).Reload().Scalars("val/loss"), "validation ran expert-parallel"

    # cross-layout resume: the DDP checkpoint continued expert-parallel, the expert-parallel one under DDP
    ep_resumed = _fit("expert_parallel.yaml", tmp_path / "ep_resumed", "--trainer.max_steps=6",
                      f"--ckpt_path={ddp / 'checkpoints' / 'last.ckpt'}")
    ddp_resumed = _fit("top2_switch.yaml", tmp_path / "ddp_resumed", "--trainer.max_steps=6",
                       f"--ckpt_path={ep / 'checkpoints' / 'last.ckpt'}")
    torch.testing.assert_close(_losses(ep_resumed), _losses(ddp_resumed), rtol=1e-5, atol=1e-6)
    _assert_same_state(_checkpoint(ep_resumed), _checkpoint(ddp_resumed))


@pytest.mark.slow
def test_data_by_expert_layout_on_four_processes_matches_ddp(tmp_path: Path) -> None:
    """4 processes, experts sharded over pairs of ranks (expert_parallel_size=2), replicas summed: = DDP on 4."""
    text = (ROOT / "configs/lm/expert_parallel.yaml").read_text()
    line = "    - class_path: gmnn.callbacks.expert_parallel.ExpertParallel\n"
    assert line in text
    config = tmp_path / "data_by_expert.yaml"
    config.write_text(text.replace(line, line + "      init_args:\n        expert_parallel_size: 2\n"))
    four = ["--trainer.devices=4", "--trainer.max_steps=4"]
    ep = _fit(str(config), tmp_path / "ep", *four)
    ddp = _fit("top2_switch.yaml", tmp_path / "ddp", *four)
    torch.testing.assert_close(_losses(ep), _losses(ddp), rtol=1e-5, atol=1e-6)
    _assert_same_state(_checkpoint(ep), _checkpoint(ddp))
