"""The linear probe of the router inputs beside the router's own top-1: hand-built inputs with known information."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gmnn.analysis.probe import fit_linear_probe, probe_report, router_inputs
from gmnn.nn import MoELayer


class Embedded(nn.Module):
    """Token ids -> fixed embeddings -> one MoE layer (the layer's input is the embedding: known features)."""

    def __init__(self, table: torch.Tensor, num_experts: int = 4) -> None:
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table)
        self.moe = MoELayer(table.shape[1], 8, num_experts, k=2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.moe(self.table(tokens))[0]


def _bits(first: torch.Tensor, second: torch.Tensor) -> float:
    """I(first; second) in bits from the empirical joint, written out by hand (independent of gmnn.metrics)."""
    n = first.numel()
    total = 0.0
    for a in first.unique().tolist():
        for b in second.unique().tolist():
            joint = int(((first == a) & (second == b)).sum()) / n
            if joint:
                total += joint * math.log2(joint / ((first == a).double().mean().item() * (second == b).double().mean().item()))
    return total


def _batches(tokens: torch.Tensor, labels: torch.Tensor, size: int = 50) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(tokens[i:i + size].reshape(5, -1), labels[i:i + size].reshape(5, -1)) for i in range(0, len(tokens), size)]


def test_probe_reads_a_linearly_separable_label_exactly_and_the_router_is_measured_on_its_own_choice() -> None:
    torch.manual_seed(0)
    table = torch.eye(6) * 3.0  # six tokens, one-hot: any labelling of them is linearly separable
    model = Embedded(table)
    with torch.no_grad():  # token t to expert t mod 4: a routing that splits the labels only partly
        model.moe.router.weight.copy_(torch.eye(4).repeat(1, 2)[:, :6])
        model.moe.router.bias.zero_()
    label_of = torch.tensor([0, 0, 1, 1, 2, 2])
    tokens = torch.randint(0, 6, (400,))
    batches = _batches(tokens, label_of[tokens])
    held_out = torch.randint(0, 6, (200,))
    [row] = probe_report(model, batches, _batches(held_out, label_of[held_out]), num_labels=3)
    labels = label_of[held_out]
    share = torch.bincount(labels, minlength=3).double() / labels.numel()
    entropy = float(-(share * share.log2()).sum())
    assert row.layer == "moe" and row.tokens == 200
    assert row.accuracy == 1.0
    assert row.probe_information == pytest.approx(entropy, abs=1e-5)
    assert row.label_entropy == pytest.approx(entropy, abs=1e-9)
    assert row.router_information == pytest.approx(_bits(held_out % 4, labels), abs=1e-5)
    assert row.router_information < entropy - 0.3


def test_probe_finds_nothing_in_inputs_that_do_not_carry_the_label() -> None:
    """Every token has the same embedding: the probe predicts one label and carries 0 bits."""
    torch.manual_seed(1)
    model = Embedded(torch.ones(4, 3))
    tokens = torch.randint(0, 4, (300,))
    labels = tokens % 2
    [row] = probe_report(model, _batches(tokens, labels), _batches(tokens, labels), num_labels=2)
    assert row.probe_information == pytest.approx(0.0, abs=1e-7)
    assert row.router_information == pytest.approx(0.0, abs=1e-7)
    assert row.accuracy == pytest.approx(max(float(labels.double().mean()), 1 - float(labels.double().mean())))


def test_router_inputs_keep_the_layer_input_and_bound_the_batches() -> None:
    torch.manual_seed(2)
    table = torch.randn(5, 4)
    model = Embedded(table)
    tokens = torch.randint(0, 5, (100,))
    found = router_inputs(model, _batches(tokens, tokens), max_batches=1)
    features, labels, experts = found["moe"]
    assert torch.equal(features, table[tokens[:50]]) and torch.equal(labels, tokens[:50])
    assert experts.shape == (50,) and model.training
    with pytest.raises(ValueError, match="max_batches"):
        router_inputs(model, _batches(tokens, tokens), max_batches=0)
    with pytest.raises(ValueError, match="no token-level MoE layer"):
        router_inputs(nn.Sequential(nn.Linear(2, 2)), [])


def test_fit_linear_probe_rejects_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        fit_linear_probe(torch.zeros(3, 2), torch.tensor([0, 1, 2]), num_labels=2)
    with pytest.raises(ValueError, match="one label per feature row"):
        fit_linear_probe(torch.zeros(3, 2), torch.tensor([0, 1]), num_labels=2)


def test_the_documented_probe_block_runs_on_a_language_model(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/routing-analysis.md's block, as written, on a small untrained MoETransformerLM."""
    import re

    from gmnn.models import MoETransformerLM
    from tests.documentation import documentation_text

    block = re.search(r"<!-- readme-test: probe -->\n```python\n(.*?)```", documentation_text(), re.S)
    assert block, "the docs lost the probe block"
    torch.manual_seed(0)
    model = MoETransformerLM(input_shape=[128], d_model=16, num_layers=2, num_heads=2, expert_hidden=16, num_experts=4)
    exec(compile(block.group(1), "docs", "exec"), {"model": model})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["blocks.0.ffn", "blocks.1.ffn"]
    entropy = float(re.search(r"of ([0-9.]+) bits", lines[0])[1])
    assert 1.0 < entropy <= math.log2(5)  # five byte classes, all present in the validation bytes
