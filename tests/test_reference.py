"""The reference mapping: which row of the reference's mnist_final_results.csv each gmnn configuration is compared with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from gmnn.cli.reference import MNIST_ROWS, NOT_COMPARABLE, PAPER_MNIST, read_reference_csv
from gmnn.cli.report import comparison_markdown, load_reference, main, summarise

HEADER = "filename,train error,test error,mutual information,sample entropy,expert usage,val error std"
# The rows of aaai_2022/results/mnist/mnist_final_results.csv (the reference's published numbers).
REAL_ROWS = """mnist_single_model_hidden_32_5,0.097,0.096,,,,0.071
mnist_without_reg_hidden_32_10_5_models.pt,0.021,0.038,2.022,0.092,2.172,0.030
mnist_with_reg_hidden_32_importance_0.2_10_5_models.pt,0.015,0.032,2.262,0.061,2.320,0.008
mnist_with_reg_hidden_32_sample_sim_same_1e-06_sample_sim_diff_1e-06_10_5_models.pt,0.015,0.029,2.244,0.051,2.246,0.009
mnist_with_attn_reg_hidden_32_importance_0.2_10_5_models.pt,0.013,0.035,2.260,0.055,2.266,0.005
mnist_with_attn_sample_sim_reg_hidden_32_sample_sim_same_1e-06_sample_sim_diff_0.01_10_5_models.pt,0.013,0.032,2.275,0.039,2.321,0.006
new_mnist_with_attn_reg_hidden_32_importance_0.4_10_5_models.pt,0.009,0.030,2.301,0.036,2.320,0.006
new_mnist_with_attn_sample_sim_reg_hidden_32_sample_sim_same_1e-06_sample_sim_diff_0.001_10_5_models.pt,0.009,0.028,2.191,0.056,2.319,0.007
mnist_without_reg_top_1_loss_gate_10_5_models.pt,0.065,0.066,1.107,7.926,1.265,0.017
mnist_without_reg_stochastic_loss_gate_10_5_models.pt,0.113,0.112,0.323,9.210,1.609,0.013
"""


def fake_csv(tmp_path: Path) -> Path:
    """Every mapped row gets its own test error 0.1 + i/100, so a row read for the wrong configuration shows."""
    lines = [HEADER]
    for i, name in enumerate(MNIST_ROWS.values()):
        suffix = "" if name.startswith("mnist_single") else "_10_5_models.pt"
        lines.append(f"{name}{suffix},0.5,{0.1 + i / 100:.2f},{1 + i / 10:.1f},0.3,2.0,0.01")
    path = tmp_path / "mnist_final_results.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_attention_rows_are_the_attention_moe_not_the_second_stage(tmp_path: Path) -> None:
    table = read_reference_csv(fake_csv(tmp_path))
    names = list(MNIST_ROWS)
    for config in ("attention_importance", "attention_similarity", "reuse_attention_importance"):
        assert table[config]["test_error"] == pytest.approx(0.1 + names.index(config) / 100)
    # the old mapping compared attention_importance with the second stage's row (new_..._importance_0.4)
    assert MNIST_ROWS["attention_importance"] == "mnist_with_attn_reg_hidden_32_importance_0.2"
    assert not MNIST_ROWS["attention_similarity"].startswith("new_")
    assert MNIST_ROWS["attention_similarity"].endswith("sample_sim_diff_0.01")


def test_loss_gate_rows_have_no_comparable_entropies(tmp_path: Path) -> None:
    table = read_reference_csv(fake_csv(tmp_path))
    for config in ("top1_stochastic", "stochastic"):
        assert table[config]["sample_entropy"] == NOT_COMPARABLE
        assert table[config]["expert_usage"] == NOT_COMPARABLE
        assert isinstance(table[config]["mutual_information"], float)
    assert table["dense"]["expert_usage"] == 2.0


def test_built_in_table_equals_the_reference_file_read_with_the_mapping(tmp_path: Path) -> None:
    path = tmp_path / "real.csv"
    path.write_text(HEADER + "\n" + REAL_ROWS)
    assert read_reference_csv(path) == PAPER_MNIST
    assert PAPER_MNIST["attention_importance"]["test_error"] == 0.035
    assert PAPER_MNIST["attention_similarity"]["mutual_information"] == 2.275
    # the units fact: 1.609 is ln 5 (nats), above every bits value a 5-expert softmax gate cannot exceed log2 5
    assert math.log(5) == pytest.approx(1.609, abs=5e-4) and 9.210 > math.log2(5)


def test_missing_row_and_unknown_reference_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text(HEADER + "\n" + REAL_ROWS.splitlines()[0] + "\n")
    with pytest.raises(ValueError, match="csv_rows: no row"):
        read_reference_csv(path)
    with pytest.raises(ValueError, match="reference must be one of"):
        load_reference("cifar1000")


def test_comparison_says_n_c_and_uses_the_corrected_rows() -> None:
    entry = {"configuration": "mnist-top1_stochastic", "runs": 1}
    rows = [dict(entry, run="a", train_error=0.01, test_error=0.04, mutual_information=1.5, sample_entropy=0.01,
                 expert_usage=1.6, per_task_entropy=0.1)]
    text = comparison_markdown(summarise(rows), PAPER_MNIST)
    assert "| 0.066 |" in text and "| 1.107 |" in text and text.count("| n/c |") == 2
    rows[0]["configuration"] = "mnist-attention_importance"
    text = comparison_markdown(summarise(rows), PAPER_MNIST)
    assert "| 0.035 |" in text and "| 2.260 |" in text and "0.030" not in text


def test_report_command_with_reference_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "runs" / "mnist-attention_importance" / "version_0"
    with SummaryWriter(str(run)) as writer:
        for tag, value in {"test/acc": 0.97, "test/mutual_information": 2.2, "test/sample_entropy": 0.03,
                           "test/expert_usage": 2.3}.items():
            writer.add_scalar(tag, value, 0)
    main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--reference", str(fake_csv(tmp_path))])
    first = (tmp_path / "out" / "results.md").read_text().splitlines()[2]
    assert first.startswith("| mnist-attention_importance | 1 | 0.030 ± 0.000 | 0.140 |")
    assert "MI (bits) | paper" in capsys.readouterr().out
