"""``gmnn fit`` with expert parallelism (configs/lm/expert_parallel.yaml) on 2 gloo CPU processes.

The references: the same model under plain DDP with 2 processes (top2_switch.yaml: same model, same data
shards per rank): the per-step losses, the final weights and Adam's moments must agree, and a checkpoint
moves between the layouts (written by DDP, resumed expert-parallel, and the other way round); and one
process on the union of the two ranks' batches, with gradient clipping by norm. Unequal batch counts per
rank must fail at once, not hang.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_lightning import Callback
from torch.utils.data import DataLoader, DistributedSampler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmnn.cli import make_cli
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
    """4 processes, experts sharded over pairs of ranks (expert_parallel_size=2), replicas summed: = DDP on 4.

    With norm clipping at every step: the norm adds the expert shards over a pair, not over all 4 ranks
    (that would count every expert twice).
    """
    text = (ROOT / "configs/lm/expert_parallel.yaml").read_text()
    line = "    - class_path: gmnn.callbacks.expert_parallel.ExpertParallel\n"
    assert line in text
    config = tmp_path / "data_by_expert.yaml"
    config.write_text(text.replace(line, line + "      init_args:\n        expert_parallel_size: 2\n"))
    four = ["--trainer.devices=4", "--trainer.max_steps=4", f"--trainer.gradient_clip_val={CLIP}"]
    ep = _fit(str(config), tmp_path / "ep", *four)
    ddp = _fit("top2_switch.yaml", tmp_path / "ddp", *four)
    torch.testing.assert_close(_losses(ep), _losses(ddp), rtol=1e-5, atol=1e-6)
    _assert_same_state(_checkpoint(ep), _checkpoint(ddp))


class RecordLosses(Callback):
    """Test helper: each rank writes its per-step training losses (and the gradient norm before clipping)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters() if p.grad is not None])))

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        Path(f"losses_rank{trainer.global_rank}.json").write_text(json.dumps({"loss": self.losses, "norm": self.norms}))


CLIP = 0.05  # well below the gradient norm of this model (checked), so every step is clipped
MATCH = [*SMALL, "--trainer.max_steps=4", "--trainer.limit_val_batches=0", f"--trainer.gradient_clip_val={CLIP}",
         "--model.init_args.balance_weight=0",  # the balance loss is not a mean over tokens: per-rank != one batch
         "--trainer.callbacks+=tests.test_expert_parallel_cli.RecordLosses"]


@pytest.mark.slow
def test_expert_parallel_fit_matches_one_process_step_by_step_with_norm_clipping(tmp_path: Path, monkeypatch) -> None:
    """2 expert-parallel processes (batch 8 each) = 1 process on the union of their batches (batch 16), per step.

    Lightning's DistributedSampler gives rank r the positions r, r + 2, ... of one seeded permutation; the one
    process reads the same permutation with one replica, so its batch s is the union of the ranks' batches s.
    Its loss is the mean of the ranks' losses (equal tokens per sequence) and its gradient their average; the
    norm clipping must count every expert once (a rank's local norm misses the other rank's experts).
    """
    ep = tmp_path / "ep"
    ep.mkdir()
    run_gmnn(["fit", "--config", str(ROOT / "configs/lm/expert_parallel.yaml"), *DDP, *MATCH], cwd=ep)
    ranks = [json.loads((ep / f"losses_rank{r}.json").read_text()) for r in range(2)]
    ep_losses = [(a + b) / 2 for a, b in zip(ranks[0]["loss"], ranks[1]["loss"])]

    one = tmp_path / "one"
    one.mkdir()
    monkeypatch.chdir(one)
    cli = make_cli(["--config", str(ROOT / "configs/lm/expert_parallel.yaml"), "--trainer.devices=1",
                    "--trainer.strategy=auto", "--trainer.accelerator=cpu", *MATCH, "--data.init_args.batch_size=16"],
                   run=False)
    data = cli.datamodule
    data.setup("fit")
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    data.train_dataloader = lambda: DataLoader(data.splits["train"], batch_size=16,  # the DDP permutation, 1 replica
                                               sampler=DistributedSampler(data.splits["train"], 1, 0, seed=seed))
    cli.trainer.fit(cli.model, datamodule=data)
    reference = json.loads((one / "losses_rank0.json").read_text())
    assert len(reference["loss"]) == len(ep_losses) == 4, (reference, ep_losses)
    assert min(reference["norm"]) > 2 * CLIP, reference["norm"]  # clipping acts at every step
    torch.testing.assert_close(ep_losses, reference["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_unequal_evaluation_batches_per_rank_fail_at_once_instead_of_hanging(tmp_path: Path) -> None:
    """65 validation sequences: rank 0 gets 33 (5 batches of 8), rank 1 32 (4): rank 0's 5th forward would wait forever."""
    result = run_gmnn(["fit", "--config", str(ROOT / "configs/lm/expert_parallel.yaml"), *DDP, *SMALL,
                       "--data.init_args.num_val=65", "--trainer.limit_val_batches=1.0", "--trainer.max_steps=2"],
                      cwd=tmp_path, timeout=90, succeed=False)
    assert "error: ExpertParallel: the processes have between 4 and 5 val batches" in result.stdout, result.stdout[-3000:]
