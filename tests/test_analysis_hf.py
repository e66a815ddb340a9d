"""Routing analysis of saved Hugging Face MoE models: tiny random-weight causal LMs of five families written with
``save_pretrained``, analysed by ``gmnn analyze --hf_model`` on the mixed-source byte data, and by
``routing_report`` on a plain stream of ``(input_ids, labels)``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gmnn.analysis import RoutingCapture, routing_report
from gmnn.cli import main

transformers = pytest.importorskip("transformers")

VOCAB = 256  # byte tokens of gmnn.data.MixedSourceTextDataModule
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=128, intermediate_size=32)
#: family -> (config class, model class, MoE settings); every family's router returns (logits, weights, experts).
FAMILIES = {
    "Mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2)),
    "Qwen2-MoE": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                                               shared_expert_intermediate_size=16)),
    "OLMoE": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, pad_token_id=0, eos_token_id=1)),
    "Qwen3-MoE": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                                               head_dim=8)),
    "DeepSeek-V3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=16, n_shared_experts=1,
        first_k_dense_replace=0, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8)),
}
EXPERTS = {"DeepSeek-V3": 8}
SEQ_LEN, SEQUENCES = 32, 8
DATA = [f"--data.init_args.{name}={value}" for name, value in dict(
    seq_len=SEQ_LEN, num_train=8, num_val=SEQUENCES, source_bytes=4000, min_segment=8, max_segment=16,
    batch_size=4).items()]


def build(family: str, seed: int = 0) -> nn.Module:
    """A tiny random-weight model of ``family`` (router weights N(0, 1): far from uniform routing)."""
    config_name, model_name, settings = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**COMMON, **settings})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("gate.weight") and parameter.dim() == 2:
                parameter.normal_()
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each family's tiny model, written by ``save_pretrained``."""
    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for family in FAMILIES:
        folders[family] = root / family
        build(family).save_pretrained(folders[family])
    return folders


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gmnn_analyze_reports_every_moe_layer_of_a_saved_model(
    family: str, saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["analyze", "--hf_model", str(saved[family]), *DATA, "--out", str(tmp_path), "--top_tokens", "5"])
    printed = capsys.readouterr().out.splitlines()
    layers = ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert printed[0].split()[:4] == ["layer", "experts", "tokens", "usage/max"]
    assert [line.split()[0] for line in printed[1:3]] == layers
    experts = EXPERTS.get(family, 4)
    rows = _read(tmp_path / "routing_val.csv")
    assert [row["layer"] for row in rows] == layers
    for row in rows:
        assert int(row["num_experts"]) == experts and int(row["tokens"]) == SEQUENCES * SEQ_LEN
        assert float(row["usage_max"]) == pytest.approx(math.log2(experts))
        assert 0 < float(row["usage"]) <= float(row["usage_max"]) + 1e-6
        assert 0 <= float(row["mutual_information"]) <= float(row["mi_ceiling"]) + 1e-6
        assert 0 < float(row["mi_ceiling"]) <= math.log2(3) + 1e-6
    per_expert = _read(tmp_path / "routing_val_experts.csv")
    assert len(per_expert) == 2 * experts
    for layer in layers:
        shares = [float(row["share"]) for row in per_expert if row["layer"] == layer]
        assert sum(shares) == pytest.approx(1.0)
    assert all(row["top_tokens"].count(":") <= 5 for row in per_expert)
    assert any(row["top_tokens"] for row in per_expert)
    labels = _read(tmp_path / "routing_val_labels.csv")
    assert {row["label"] for row in labels} <= {"code", "prose", "data"} and len(labels) >= 2
    assert all(0 <= float(row["entropy"]) <= math.log2(experts) + 1e-6 for row in labels)
    for layer in layers:
        assert (tmp_path / f"routing_val_{layer.replace('.', '_')}.png").stat().st_size > 0


def test_routing_report_of_a_labelled_stream_matches_the_routers_own_choices(saved: dict[str, Path]) -> None:
    """DeepSeek-V3 from its folder: sigmoid probabilities normalised per token, the top-1 as the router's chosen
    expert of highest weight (its ``topk(sorted=False)`` puts it anywhere), the token counts equal to the routed
    pairs; the counts are one fixed [E, vocab] tensor whatever the stream's length."""
    model = transformers.AutoModelForCausalLM.from_pretrained(saved["DeepSeek-V3"]).eval()
    generator = torch.Generator().manual_seed(0)
    stream = [(torch.randint(0, VOCAB, (2, 16), generator=generator), torch.randint(0, 3, (2, 16), generator=generator))
              for _ in range(6)]
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    gate = model.model.layers[0].mlp.gate
    handle = gate.register_forward_hook(lambda module, inputs, output: seen.append(tuple(t.detach() for t in output)))
    capture = RoutingCapture(model)
    with torch.no_grad():
        model(stream[0][0])
    handle.remove()
    record = capture.records["model.layers.0.mlp"]
    capture.remove()
    logits, weights, indices = seen[0]
    torch.testing.assert_close(record.probs, torch.sigmoid(logits) / torch.sigmoid(logits).sum(-1, keepdim=True))
    assert torch.equal(record.top1, indices.gather(-1, weights.argmax(-1, keepdim=True)).squeeze(-1))

    rows, matrices = routing_report(saved["DeepSeek-V3"], (batch for batch in stream))  # a folder and a generator
    assert [row.tokens for row in rows] == [6 * 32, 6 * 32]
    first = matrices["model.layers.0.mlp"]
    assert first["tokens"].shape == (8, VOCAB) and first["tokens"].dtype == torch.int64
    assert torch.equal(first["tokens"].sum(1).double(), first["load"])
    assert first["joint"].sum() == 6 * 32
    seen.clear()
    handle = gate.register_forward_hook(lambda module, inputs, output: seen.append(tuple(t.detach() for t in output)))
    with torch.no_grad():
        for ids, _ in stream:
            model(ids)
    handle.remove()
    expected = torch.zeros(8, VOCAB, dtype=torch.int64)
    for (ids, _), (_, _, chosen) in zip(stream, seen):
        expected.index_put_((chosen.reshape(-1), ids.reshape(-1, 1).expand_as(chosen).reshape(-1)),
                            torch.ones(chosen.numel(), dtype=torch.int64), accumulate=True)
    assert torch.equal(first["tokens"], expected)


def test_tokens_outside_the_vocabulary_are_refused_in_one_line(saved: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"^token id 300 of the data is outside the model's vocabulary of 256 tokens$"):
        routing_report(saved["Mixtral"], [(torch.tensor([[1, 300]]), torch.tensor([[0, 1]]))])


@pytest.mark.parametrize("model_args", [[], ["--ckpt_path", "x.ckpt", "--hf_model", "."]], ids=["neither", "both"])
def test_exactly_one_model_source(model_args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["analyze", *model_args])
    assert stopped.value.code == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        "gmnn: error: gmnn analyze needs exactly one model: --ckpt_path (a gmnn checkpoint) or --hf_model "
        "(a folder written by save_pretrained)")


def test_a_folder_without_a_model_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["analyze", "--hf_model", str(tmp_path)])
    assert capsys.readouterr().err.splitlines()[0] == (
        f"gmnn: error: --hf_model {tmp_path} is not a folder written by save_pretrained (no config.json)")
