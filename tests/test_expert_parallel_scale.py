"""scripts/expert_parallel_scale.py: the paper figures against hand-computed values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("expert_parallel_scale", ROOT / "scripts/expert_parallel_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_figures_by_hand() -> None:
    # T=4 tokens, k=2 -> 8 routed rows; d=3, hidden=5: 3*5 + 5*3 = 30 weights per expert; E=4 over P=2
    out = _script().paper(tokens=4, k=2, d_model=3, hidden=5, experts=4, ranks=2, gated=False, bytes_per=2,
                          capacity_factor=0.0)
    assert out["all_to_all_bytes"] == 4 * 8 * 3 * 2 * 0.5  # 4 exchanges, half the rows leave the rank
    assert out["ddp_allreduce_bytes_if_replicated"] == 2 * 0.5 * 4 * 30 * 2  # ring all-reduce of all experts
    assert out["expert_params_per_rank"] == 2 * 30
    assert out["expert_memory_bytes_per_rank"] == 60 * (2 * 2 + 8)  # weights + grads at 2 B, Adam m, v at 4 B
    assert out["expert_flops_per_rank"] == 3 * 2 * 8 * 30
    gated = _script().paper(4, 2, 3, 5, 4, 2, True, 2, 1.5)  # SwiGLU: 3*10 + 5*3 = 45; capacity 1.5 * 8 = 12 rows
    assert gated["expert_params_per_rank"] == 2 * 45 and gated["all_to_all_bytes"] == 4 * 12 * 3 * 2 * 0.5


def test_ranks_must_divide_experts() -> None:
    with pytest.raises(ValueError, match="ranks=3 must divide experts=4"):
        _script().paper(4, 2, 3, 5, 4, 3, False, 2, 0.0)
