"""The reference implementation's published MNIST numbers, mapped to gmnn's configurations.

Source: ``aaai_2022/results/mnist/mnist_final_results.csv`` of the public repository
``yamsgithub/modular_deep_learning`` (Krishnamurthy, Watkins & Gaertner, 2023), 5 experts. What the
numbers are (RESULTS.md, "Reading the reference numbers", gives the evidence line by line):

- each row is one run out of 10: the run with the lowest *training* error of its last epoch (the
  running accuracy over that epoch's training batches); the row's last column is the sample std of the
  test error over the runs;
- MI is in bits; sample entropy and expert usage are in bits for the dense rows;
- the two loss-gate rows (``..._top_1_loss_gate``, ``..._stochastic_loss_gate``) were computed from gate
  outputs that are not probabilities (sample entropy 7.9 and 9.2 bits, above log2 5 = 2.32), and their
  expert usage is in nats (at most ln 5 = 1.609): neither column is comparable with gmnn's;
- the ``new_...`` rows come from a second training stage (the experts of a trained attention MoE reused,
  frozen, under a new plain gate warm-started from the old one), not from the attention MoE itself.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

NOT_COMPARABLE = "n/c"
"""Marks a reference number that measures something else than gmnn's column of the same name."""

Value = float | str  # a number, or NOT_COMPARABLE

MNIST_CSV = "aaai_2022/results/mnist/mnist_final_results.csv"
SUFFIX = "_10_5_models.pt"  # 10 classes, 5 experts: the reference's file-name tail

# gmnn configuration (the name after the last '-') -> the CSV row (file name without SUFFIX).
MNIST_ROWS: dict[str, str] = {
    "single": "mnist_single_model_hidden_32_5",
    "dense": "mnist_without_reg_hidden_32",
    "importance": "mnist_with_reg_hidden_32_importance_0.2",
    "sample_similarity": "mnist_with_reg_hidden_32_sample_sim_same_1e-06_sample_sim_diff_1e-06",
    "attention_importance": "mnist_with_attn_reg_hidden_32_importance_0.2",
    "attention_similarity": "mnist_with_attn_sample_sim_reg_hidden_32_sample_sim_same_1e-06_sample_sim_diff_0.01",
    "top1_stochastic": "mnist_without_reg_top_1_loss_gate",
    "stochastic": "mnist_without_reg_stochastic_loss_gate",
    # Second stage (experts of the attention model above, frozen, under a new plain gate): gmnn's reuse_experts.
    "reuse_attention_importance": "new_mnist_with_attn_reg_hidden_32_importance_0.4",
    "reuse_attention_similarity": "new_mnist_with_attn_sample_sim_reg_hidden_32_sample_sim_same_1e-06_sample_sim_diff_0.001",
}

# Columns of rows whose gate outputs were not probabilities (sample entropy) or whose entropy is in nats.
MNIST_NOT_COMPARABLE: dict[str, tuple[str, ...]] = {
    "top1_stochastic": ("sample_entropy", "expert_usage"),
    "stochastic": ("sample_entropy", "expert_usage"),
}

CSV_COLUMNS: dict[str, str] = {  # gmnn column -> the reference CSV's header
    "train_error": "train error",
    "test_error": "test error",
    "mutual_information": "mutual information",
    "sample_entropy": "sample entropy",
    "expert_usage": "expert usage",
    "test_error_std": "val error std",  # named "val error", computed as the std of the test error
}


def reference_table(
    csv_rows: Mapping[str, Mapping[str, str]],
    rows: Mapping[str, str] = MNIST_ROWS,
    not_comparable: Mapping[str, tuple[str, ...]] = MNIST_NOT_COMPARABLE,
) -> dict[str, dict[str, Value]]:
    """The reference numbers per gmnn configuration from the CSV's rows (keyed by file name).

    Args:
        csv_rows: The reference CSV as ``{filename: {header: text}}``.
        rows: gmnn configuration -> the row's file name, with or without :data:`SUFFIX`.
        not_comparable: Columns to report as :data:`NOT_COMPARABLE` per configuration.

    Raises:
        ValueError: A mapped row is missing from ``csv_rows``.
    """
    table: dict[str, dict[str, Value]] = {}
    for config, name in rows.items():
        row = csv_rows.get(name, csv_rows.get(name + SUFFIX))
        if row is None:
            raise ValueError(f"csv_rows: no row {name!r} (for {config!r}); rows are {sorted(csv_rows)}")
        values: dict[str, Value] = {}
        for column, header in CSV_COLUMNS.items():
            text = (row.get(header) or "").strip()
            if text and not math.isnan(float(text)):
                values[column] = NOT_COMPARABLE if column in not_comparable.get(config, ()) else float(text)
        table[config] = values
    return table


def read_reference_csv(path: str | Path) -> dict[str, dict[str, Value]]:
    """:func:`reference_table` of a reference results CSV file (``mnist_final_results.csv``)."""
    with Path(path).open(newline="") as handle:
        return reference_table({row["filename"]: row for row in csv.DictReader(handle)})


# mnist_final_results.csv, read with the mapping above (tests/test_reference.py checks it against the rows).
PAPER_MNIST: dict[str, dict[str, Value]] = {
    "single": {"train_error": 0.097, "test_error": 0.096, "test_error_std": 0.071},
    "dense": {"train_error": 0.021, "test_error": 0.038, "mutual_information": 2.022, "sample_entropy": 0.092,
              "expert_usage": 2.172, "test_error_std": 0.030},
    "importance": {"train_error": 0.015, "test_error": 0.032, "mutual_information": 2.262, "sample_entropy": 0.061,
                   "expert_usage": 2.320, "test_error_std": 0.008},
    "sample_similarity": {"train_error": 0.015, "test_error": 0.029, "mutual_information": 2.244,
                          "sample_entropy": 0.051, "expert_usage": 2.246, "test_error_std": 0.009},
    "attention_importance": {"train_error": 0.013, "test_error": 0.035, "mutual_information": 2.260,
                             "sample_entropy": 0.055, "expert_usage": 2.266, "test_error_std": 0.005},
    "attention_similarity": {"train_error": 0.013, "test_error": 0.032, "mutual_information": 2.275,
                             "sample_entropy": 0.039, "expert_usage": 2.321, "test_error_std": 0.006},
    "top1_stochastic": {"train_error": 0.065, "test_error": 0.066, "mutual_information": 1.107,
                        "sample_entropy": NOT_COMPARABLE, "expert_usage": NOT_COMPARABLE, "test_error_std": 0.017},
    "stochastic": {"train_error": 0.113, "test_error": 0.112, "mutual_information": 0.323,
                   "sample_entropy": NOT_COMPARABLE, "expert_usage": NOT_COMPARABLE, "test_error_std": 0.013},
    "reuse_attention_importance": {"train_error": 0.009, "test_error": 0.030, "mutual_information": 2.301,
                                   "sample_entropy": 0.036, "expert_usage": 2.320, "test_error_std": 0.006},
    "reuse_attention_similarity": {"train_error": 0.009, "test_error": 0.028, "mutual_information": 2.191,
                                   "sample_entropy": 0.056, "expert_usage": 2.319, "test_error_std": 0.007},
}
REFERENCES: dict[str, dict[str, dict[str, Value]]] = {"mnist": PAPER_MNIST}
