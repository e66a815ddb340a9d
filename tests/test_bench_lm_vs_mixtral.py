"""scripts/bench_lm_vs_mixtral.py: both models are the same size, and the kernel split adds up."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    sys.path.insert(0, str(ROOT / "scripts"))  # its helper module peak_memory
    try:
        spec = importlib.util.spec_from_file_location("bench_lm_vs_mixtral", ROOT / "scripts" / "bench_lm_vs_mixtral.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


def test_the_two_models_differ_only_by_the_router_biases() -> None:
    bench = load_script()
    size = bench.SIZES["quick"]
    gmnn, hf = bench.build("gmnn", size), bench.build("hf", size)
    assert bench.parameters(gmnn) - bench.parameters(hf) == size["layers"] * size["experts"]


def test_the_kernel_split_finds_the_shared_kernels_on_both_sides() -> None:
    bench = load_script()
    split = bench.kernel_split(bench.SIZES["quick"], steps=1)
    for side in ("gmnn", "hf"):
        step, shared = split[side]["step_ms"], split[side]["shared_ms"]
        assert 0 < shared < step  # matmuls and attention were found, and the rest (norms, Adam, ...) costs time


def test_speed_times_both_models_for_every_step() -> None:
    bench = load_script()
    result = bench.speed(bench.SIZES["quick"], steps=2)
    assert set(result["step_s"]) == {"gmnn", "hf"} and all(t > 0 for t in result["step_s"].values())
    assert result["params"]["gmnn"] > result["params"]["hf"] > 0
