"""gmnn.analysis: routing_report on gmnn layers and Hugging Face blocks; `gmnn analyze` writes CSV + PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gmnn.analysis import RoutingStats, find_moe_layers, routing_report
from gmnn.cli import main, make_cli
from gmnn.metrics import mutual_information_bits
from gmnn.nn import MoELayer
from gmnn.nn.moe.record import Routing

# (expert, label) counts [[3, 1], [0, 2], [1, 1]]: worked out in tests/callbacks/test_routing_monitor.py
HAND_MI = 3 / 8 * math.log2(3 / 2) + 1 / 8 * math.log2(1 / 2) + 2 / 8 * math.log2(2)


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = MoELayer(3, 4, 3, k=1), MoELayer(3, 4, 3, k=2)
        with torch.no_grad():
            self.first.router.weight.copy_(10 * torch.eye(3))
            self.first.router.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x)[0] + x)[0]


def test_report_of_a_hand_routed_layer() -> None:
    x = nn.functional.one_hot(torch.tensor([0, 0, 0, 0, 1, 1, 2, 2]), 3).float().view(2, 4, 3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1]).view(2, 4)
    batches = [(x[i:i + 1], labels[i:i + 1]) for i in range(2)]
    rows, matrices = routing_report(TwoLayers(), batches)
    assert [row.layer for row in rows] == ["first", "second"]
    first = rows[0]
    assert first.tokens == 8 and first.num_experts == 3
    assert first.mutual_information == pytest.approx(HAND_MI, abs=1e-6)
    assert first.mi_ceiling == pytest.approx(1.0)  # min(log2 3, H(label) = 1 bit)
    assert first.usage == pytest.approx(1.5) and first.imbalance == pytest.approx(1.5) and first.dead_experts == 0
    assert torch.equal(matrices["first"]["joint"], torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64))
    assert torch.equal(matrices["second"]["coactivation"].diagonal(), matrices["second"]["load"])
    assert float(matrices["second"]["load"].sum()) == 16  # top-2: two pairs per token


def test_stats_ignore_padding_and_empty_slots() -> None:
    routing = Routing(probs=torch.full((4, 3), 1 / 3), selected=torch.tensor([[0, 1], [2, -1], [1, -1], [0, 2]]),
                      logits=torch.zeros(4, 3), mask=torch.tensor([True, True, True, False]))
    stats = RoutingStats(3, num_labels=2)
    stats.update(routing, torch.tensor([0, 1, -100, 1]))
    values = stats.compute()
    assert stats.load.tolist() == [1.0, 2.0, 1.0]  # token 3 is padding, slots -1 are empty
    assert stats.joint.tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]  # label -100 is ignored
    assert values["imbalance"].item() == pytest.approx(1.5)
    assert values["router_z"].item() == pytest.approx(math.log(3) ** 2, rel=1e-5)


def test_hugging_face_blocks_are_found_and_read_from_their_router() -> None:
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    from transformers import MixtralConfig

    config = MixtralConfig(hidden_size=16, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2)

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(mixtral.MixtralSparseMoeBlock(config) for _ in range(2))
            for p in self.parameters():
                nn.init.normal_(p, std=0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = x + layer(x)
            return x

    model = Stack().eval()
    assert set(find_moe_layers(model)) == {"layers.0", "layers.1"}
    x, labels = torch.randn(3, 10, 16), torch.randint(0, 3, (3, 10))
    rows, matrices = routing_report(model, [(x, labels)])
    with torch.no_grad():  # the block's own router on the block's input
        logits = model.layers[0].gate(x.reshape(-1, 16))[0]
    top1 = logits.argmax(-1)
    joint = torch.zeros(4, 3, dtype=torch.float64).index_put_((top1, labels.flatten()), torch.ones(30, dtype=torch.float64), accumulate=True)
    assert torch.equal(matrices["layers.0"]["joint"], joint)
    assert rows[0].mutual_information == pytest.approx(float(mutual_information_bits(joint)), abs=1e-6)
    assert rows[0].tokens == 30 and float(matrices["layers.0"]["load"].sum()) == 60


def test_gmnn_analyze_writes_csv_and_png(tmp_path: Path) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "lm" / "top2_switch.yaml"
    small = ["--data.init_args.seq_len=32", "--data.init_args.num_train=16", "--data.init_args.num_val=8",
             "--data.init_args.source_bytes=3000", "--data.init_args.min_segment=8", "--data.init_args.max_segment=16",
             "--data.init_args.batch_size=8"]
    make_cli(["fit", "--config", str(config), "--trainer.max_epochs=1", f"--trainer.logger.init_args.save_dir={tmp_path}",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *small])
    run = tmp_path / "gmnn" / "version_0"
    main(["analyze", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "report")])
    rows = list(csv.DictReader(open(tmp_path / "report" / "routing_val.csv")))
    assert [row["layer"] for row in rows] == ["blocks.0.ffn", "blocks.1.ffn"]
    assert all(int(row["tokens"]) == 8 * 32 and 0 <= float(row["mutual_information"]) <= float(row["mi_ceiling"]) + 1e-6
               for row in rows)
    assert (tmp_path / "report" / "routing_val_blocks_0_ffn.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        main(["analyze", "--ckpt_path", str(tmp_path / "missing.ckpt")])
