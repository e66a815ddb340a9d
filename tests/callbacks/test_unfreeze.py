"""UnfreezeExperts (the reference's split training) and GateTransfer(strict=False) (its warm-started gate)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from gmnn.callbacks import GateTransfer, UnfreezeExperts
from gmnn.models import AttentionGateMoE, DenseMoE
from tests.callbacks.test_gate_transfer import COMMON, checkpoint_of, four_blobs


class Snapshots(pl.Callback):
    """The expert and gate weights at the start of every epoch, and the optimizer's step count then."""

    def __init__(self) -> None:
        self.experts: list[torch.Tensor] = []
        self.gates: list[torch.Tensor] = []
        self.steps: list[int] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.experts.append(torch.cat([p.detach().flatten() for p in pl_module.experts.parameters()]).clone())
        self.gates.append(torch.cat([p.detach().flatten() for p in pl_module.gate.parameters()]).clone())
        state = trainer.optimizers[0].state
        self.steps.append(max((int(s["step"]) for s in state.values() if "step" in s), default=0))


def fit(model: DenseMoE, callbacks: list[pl.Callback], tmp_path: Path, epochs: int = 4, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path, **kwargs)
    trainer.fit(model, DataLoader(four_blobs(), batch_size=64, shuffle=True), DataLoader(four_blobs(), batch_size=256))
    return trainer


def test_experts_are_fixed_for_half_the_epochs_then_train_with_a_fresh_optimizer(tmp_path: Path) -> None:
    snapshots = Snapshots()  # runs before UnfreezeExperts' epoch-start hook: sees the state the epoch starts from
    fit(DenseMoE(**COMMON), [snapshots, UnfreezeExperts()], tmp_path)
    experts, gates = snapshots.experts, snapshots.gates
    assert torch.equal(experts[0], experts[1]) and torch.equal(experts[1], experts[2])  # epochs 0, 1: fixed
    assert not torch.equal(experts[2], experts[3])  # epoch 2 trained them
    assert all(not torch.equal(a, b) for a, b in zip(gates, gates[1:]))  # the gate trains throughout
    # 4 batches per epoch: the optimizer counted 4, 8 steps, then started again at the unfreezing (a new Adam)
    assert snapshots.steps == [0, 4, 8, 4]


def test_without_reset_the_optimizer_keeps_counting(tmp_path: Path) -> None:
    snapshots = Snapshots()
    fit(DenseMoE(**COMMON), [snapshots, UnfreezeExperts(epoch=1, reset_optimizer_state=False)], tmp_path, epochs=3)
    assert torch.equal(snapshots.experts[0], snapshots.experts[1]) and not torch.equal(snapshots.experts[1], snapshots.experts[2])
    assert snapshots.steps == [0, 4, 8]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")  # resumed into its own folder
def test_resumed_after_the_unfreezing_the_experts_keep_training(tmp_path: Path) -> None:
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[UnfreezeExperts(epoch=1), checkpoint], default_root_dir=tmp_path)
    trainer.fit(DenseMoE(**COMMON), DataLoader(four_blobs(), batch_size=64), DataLoader(four_blobs(), batch_size=256))
    snapshots = Snapshots()
    resumed = pl.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[snapshots, UnfreezeExperts(epoch=1), pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)],
                         default_root_dir=tmp_path)
    model = DenseMoE(**COMMON)
    resumed.fit(model, DataLoader(four_blobs(), batch_size=64), DataLoader(four_blobs(), batch_size=256),
                ckpt_path=str(tmp_path / "last.ckpt"))
    assert all(p.requires_grad for p in model.experts.parameters())
    assert not torch.equal(snapshots.experts[0], torch.cat([p.detach().flatten() for p in model.experts.parameters()]))
    assert len(resumed.optimizers[0].param_groups) == 2  # restored, not added twice


def test_a_schedule_or_a_missing_epoch_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="learning-rate schedule"):
        fit(DenseMoE(**COMMON, scheduler="cosine"), [UnfreezeExperts()], tmp_path)
    with pytest.raises(ValueError, match="epoch"):
        UnfreezeExperts(epoch=0)
    with pytest.raises(ValueError, match="max_epochs"):
        fit(DenseMoE(**COMMON), [UnfreezeExperts()], tmp_path, epochs=-1, max_steps=2)


def test_non_strict_gate_transfer_copies_the_shared_layers_of_an_attention_gate(tmp_path: Path) -> None:
    torch.manual_seed(0)
    attention = AttentionGateMoE(**COMMON)
    path = checkpoint_of(attention, tmp_path / "attention.ckpt")
    plain = DenseMoE(**COMMON)
    head_before = plain.gate.head.weight.detach().clone()
    with pytest.raises(ValueError, match="another architecture"):
        GateTransfer(path).setup(None, plain, "fit")
    transfer = GateTransfer(path, freeze=False, strict=False)
    transfer.setup(None, plain, "fit")
    assert transfer.loaded == ["body.0.bias", "body.0.weight"]
    torch.testing.assert_close(plain.gate.body[0].weight, attention.gate.body[0].weight, atol=0, rtol=0)
    assert torch.equal(plain.gate.head.weight, head_before)  # the output layer stays new
    assert all(p.requires_grad for p in plain.gate.parameters())
    narrower = DenseMoE(**{**COMMON, "gate_hidden": [4]})
    with pytest.raises(ValueError, match="shares no gate tensor"):
        GateTransfer(path, strict=False).setup(None, narrower, "fit")
