"""RoutingMonitor: hand-computed mutual information, stability, image variants, figures."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from gmnn.callbacks import RoutingMonitor
from gmnn.analysis.plots import routing_figure
from gmnn.data import ToyDataModule
from gmnn.models import DenseMoE
from gmnn.nn import MoELayer
from tests.conftest import tiny_trainer

# Three experts, hand-set router: token one_hot(e) goes to expert e (logits 10 x the input).
# Eight tokens with (expert, label) counts [[3, 1], [0, 2], [1, 1]]:
#   p(e) = (4/8, 2/8, 2/8), p(l) = (4/8, 4/8)
#   I = sum p(e, l) log2(p(e, l) / (p(e) p(l)))
#     = 3/8 log2((3/8) / (4/8 * 4/8)) + 1/8 log2((1/8) / (4/8 * 4/8)) + 2/8 log2((2/8) / (2/8 * 4/8))
#       + 1/8 log2((1/8) / (2/8 * 4/8)) + 1/8 log2((1/8) / (2/8 * 4/8))
#     = 3/8 log2(3/2) + 1/8 log2(1/2) + 2/8 log2(2) + 0 + 0
HAND_MI = 3 / 8 * math.log2(3 / 2) + 1 / 8 * math.log2(1 / 2) + 2 / 8 * math.log2(2)  # 0.3444 bits
EXPERTS = [0, 0, 0, 0, 1, 1, 2, 2]
LABELS = [0, 0, 0, 1, 1, 1, 0, 1]
# per-label entropy of the top-1 expert: label 0 -> (3/4, 0, 1/4); label 1 -> (1/4, 2/4, 1/4) = 1.5 bits
HAND_LABEL_ENTROPY = (-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)) + 1.5) / 2
# usage: shares (1/2, 1/4, 1/4) -> 1.5 bits; imbalance: (1/2) / (1/3) = 1.5


class HandRouted(L.LightningModule):
    """One MoE layer whose router sends token one_hot(e) to expert e."""

    def __init__(self, lr: float = 0.0) -> None:
        super().__init__()
        self.lr = lr
        self.ffn = MoELayer(3, 4, 3, k=1)
        with torch.no_grad():
            self.ffn.router.weight.copy_(10 * torch.eye(3))
            self.ffn.router.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(x)[0]

    def training_step(self, batch, batch_idx):
        return self(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _token_batches() -> DataLoader:
    x = torch.nn.functional.one_hot(torch.tensor(EXPERTS), 3).float()  # [8, 3]
    y = torch.zeros(8)
    # two sequences of four tokens, in two batches: the monitor must add them up over the epoch
    order = torch.tensor([0, 4, 3, 7, 1, 5, 2, 6])
    data = TensorDataset(x[order].view(2, 4, 3), y[order].view(2, 4), torch.tensor(LABELS)[order].view(2, 4))
    return DataLoader(data, batch_size=1)


def test_mutual_information_equals_hand_computed_value() -> None:
    monitor = RoutingMonitor(stages=("val",), num_labels=2, probe_size=0)  # labels: the batch's last entry
    trainer = tiny_trainer(callbacks=[monitor])
    trainer.validate(HandRouted(), _token_batches(), verbose=False)
    metrics = trainer.callback_metrics
    assert metrics["val/routing/ffn/mutual_information"].item() == pytest.approx(HAND_MI, abs=1e-6)
    assert metrics["val/routing/ffn/label_entropy"].item() == pytest.approx(HAND_LABEL_ENTROPY, abs=1e-6)
    assert metrics["val/routing/ffn/usage"].item() == pytest.approx(1.5)
    assert metrics["val/routing/ffn/imbalance"].item() == pytest.approx(1.5)
    assert metrics["val/routing/ffn/dead_experts"].item() == 0
    assert metrics["val/routing/ffn/dropped"].item() == 0
    series = {key for key in metrics if key.startswith("val/routing/")}
    assert len(series) == 7  # a small fixed number of series per layer


class FlipsRouter(HandRouted):
    """Rotates the router's rows at the start of the second epoch: every token's top-1 expert changes."""

    def on_train_epoch_start(self) -> None:
        if self.current_epoch == 1:
            with torch.no_grad():
                self.ffn.router.weight.copy_(self.ffn.router.weight.roll(1, 0))


def test_stability_counts_changed_top1_on_the_probe() -> None:
    monitor = RoutingMonitor(stages=("train",), num_labels=2, probe_size=2)
    trainer = tiny_trainer(callbacks=[monitor], max_epochs=2, limit_val_batches=0)
    trainer.fit(FlipsRouter(lr=0.0), _token_batches())
    assert monitor.stability["ffn"] == [0.0, 1.0]
    assert trainer.callback_metrics["train/routing/ffn/stability"].item() == 1.0
    # the training stats went through the same metric: the rotated router permutes the experts, same MI
    assert trainer.callback_metrics["train/routing/ffn/mutual_information"].item() == pytest.approx(HAND_MI, abs=1e-6)


def test_image_variant_matches_the_models_own_mutual_information() -> None:
    data = ToyDataModule("gaussian_clusters", num_samples=600, batch_size=64)
    model = DenseMoE(input_shape=[2], num_classes=3, num_experts=3)
    monitor = RoutingMonitor(stages=("val",))
    trainer = tiny_trainer(callbacks=[monitor], max_epochs=1, limit_train_batches=3)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert metrics["val/routing/gate/mutual_information"].item() == pytest.approx(
        metrics["val/mutual_information_label"].item(), abs=1e-5)
    assert metrics["val/routing/gate/usage"].item() <= math.log2(3) + 1e-6


def test_figure_panels() -> None:
    matrices = {"joint": torch.tensor([[3.0, 1.0], [0.0, 4.0]]), "load": torch.tensor([4.0, 4.0]),
                "coactivation": torch.diag(torch.tensor([4.0, 4.0]))}
    fig = routing_figure(matrices, ["code", "prose"], "ffn", stability=[0.5, 0.1])
    assert len(fig.axes) == 4
    assert len(routing_figure({**matrices, "joint": torch.zeros(2, 1)}).axes) == 2  # no labels: no heatmap


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="stages"):
        RoutingMonitor(stages=("training",))
    with pytest.raises(ValueError, match="probe_size"):
        RoutingMonitor(probe_size=-1)


DDP_SCRIPT = '''
import json, sys, torch
torch.set_num_threads(1)
import pytorch_lightning as L
from gmnn.callbacks import RoutingMonitor
from gmnn.data import MixedSourceTextDataModule
from gmnn.models import MoETransformerLM
L.seed_everything(0, verbose=False)
data = MixedSourceTextDataModule(seq_len=16, num_train=16, num_val=11, source_bytes=3000, min_segment=8,
                                 max_segment=16, batch_size=4)  # 11 sequences: unequal shards of 6 and 5
model = MoETransformerLM(input_shape=[16], d_model=16, num_layers=1, num_heads=2, expert_hidden=16)
kw = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=True,
          enable_model_summary=False, callbacks=[RoutingMonitor(probe_size=2)])
trainer = L.Trainer(devices=int(sys.argv[1]), strategy="ddp" if sys.argv[1] == "2" else "auto", max_epochs=1, **kw)
if sys.argv[1] == "2":
    trainer.fit(model, data)
    torch.save(model.state_dict(), sys.argv[2])
else:
    model.load_state_dict(torch.load(sys.argv[2]))
    trainer.validate(model, data, verbose=False)
if trainer.is_global_zero:
    print("METRICS" + json.dumps({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}))
'''


@pytest.mark.slow
def test_ddp_metrics_equal_one_process(tmp_path, monkeypatch, capsys) -> None:
    """Two DDP processes (unequal validation shards) log the monitor's values of one process on the same weights.

    The one process is this one: the same script, run in place on the weights the DDP run saved."""
    import json
    import os
    import runpy
    import signal
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(DDP_SCRIPT)
    process = subprocess.Popen([sys.executable, str(script), "2", str(tmp_path / "w.pt")], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("devices=2 hung")
    assert process.returncode == 0, output[-3000:]
    ddp = json.loads(output.split("METRICS")[-1].splitlines()[0])

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "1", str(tmp_path / "w.pt")])
    capsys.readouterr()
    runpy.run_path(str(script), run_name="__main__")
    one = json.loads(capsys.readouterr().out.split("METRICS")[-1].splitlines()[0])
    routing = [key for key in one if "/routing/" in key]
    assert len(routing) == 7 and "val/loss" in one
    for key in [*routing, "val/loss"]:
        assert ddp[key] == pytest.approx(one[key], abs=1e-5, nan_ok=True), key
