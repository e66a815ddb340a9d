"""The GPU check's CPU dry run: every step runs and the JSON holds sane fields (scripts/gpu_check.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
STEPS = ["grouped_mm", "fit_toy", "fit_lm", "fit_lm_bf16", "log_fast_path", "compile_moe_layer", "bench_layer", "bench_memory",
         "bench_moe_layer", "bench_training"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The dry run's JSON (one run for every test here)."""
    folder = tmp_path_factory.mktemp("gpu_check")
    out = folder / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--json", str(out), "--scratch", str(folder / "runs")],
                          capture_output=True, text=True, timeout=300, cwd=folder, check=False)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert proc.returncode == (0 if data["ok"] else 1), proc.stderr[-3000:]
    return data


def test_this_module_is_one_xdist_group(request: pytest.FixtureRequest) -> None:
    """Under pytest-xdist's --dist loadgroup every test here runs on one worker (tests/conftest.py), so the dry run
    above runs once per suite, not once per worker that gets one of these tests."""
    if not hasattr(request.config, "workerinput") or not request.config.getvalue("loadgroup"):
        pytest.skip("not an xdist worker under --dist loadgroup")
    assert request.node.nodeid.endswith("@tests/test_gpu_check.py"), request.node.nodeid


def test_environment(report: dict) -> None:
    assert report["mode"] == "dry-run" and report["device"] == "cpu"
    for key in ("device_name", "torch", "pytorch_lightning", "python", "compile_backend"):
        assert report[key], key
    assert "cuda" in report  # None on a CPU-only build of torch
    assert 0 < report["seconds"] <= report["budget_s"]


def test_every_step_ok(report: dict) -> None:
    assert list(report["steps"]) == STEPS
    for name, step in report["steps"].items():
        assert set(step) >= {"ok", "error", "seconds", "budget_s", "figures"}, name
        assert step["ok"], f"{name}: {step['error']}\n{step.get('traceback')}"
        assert step["error"] is None
        assert 0 < step["seconds"] <= step["budget_s"], name
        assert step["figures"], name
    assert report["ok"] == all(step["ok"] for step in report["steps"].values())


@pytest.mark.parametrize("name", ["fit_toy", "fit_lm", "fit_lm_bf16"])
def test_fits(report: dict, name: str) -> None:
    fig = report["steps"][name]["figures"]
    assert fig["global_step"] == 3  # limit_train_batches=3, one epoch
    assert fig["root_device"] == "cpu" and fig["parameter_device"] == "cpu"
    assert fig["progress_bar"] and "DecompositionFigures" in fig["callbacks"]
    assert "--trainer.accelerator=cpu" in fig["args"]
    assert "checkpoints/last.ckpt" in fig["run_files"] and "config.yaml" in fig["run_files"]
    assert fig["tensorboard_images"], "the configs' figures were logged"
    assert fig["metrics"] and all(math.isfinite(v) for v in fig["metrics"].values())
    assert "val/loss" in fig["metrics"]
    assert fig["precision"] == ("bf16-mixed" if name.endswith("bf16") else "32-true")


def test_grouped_mm(report: dict) -> None:
    fig = report["steps"]["grouped_mm"]["figures"]
    assert fig["float32"]["grouped_mm_works"]  # torch._grouped_mm runs float32 on the CPU
    for entry in fig.values():
        if entry["grouped_mm_works"]:
            for key in ("linear_rel_diff", "linear_grad_rel_diff", "layer_rel_diff", "layer_grad_rel_diff"):
                assert entry[key] <= entry["tolerance"], key
            for key in ("linear_grouped_ms", "linear_loop_ms", "layer_grouped_ms", "layer_loop_ms"):
                assert entry[key] > 0, key


def test_compile(report: dict) -> None:
    step = report["steps"]["compile_moe_layer"]
    fig = step["figures"]
    assert fig["backend"] == "aot_eager"
    # float32 too, where torch._grouped_mm runs float32 eagerly (the CPU): compiled, the layer loops over experts
    assert step["ok"], step["error"]
    for dtype in ("float32", "bfloat16"):
        assert "error" not in fig[dtype], fig[dtype]["error"]
        assert fig[dtype]["out_rel_diff"] <= fig[dtype]["tolerance"]
        assert fig[dtype]["grad_rel_diff"] <= fig[dtype]["tolerance"]
        assert fig[dtype]["compiled_ms"] > 0 and fig[dtype]["eager_ms"] > 0


def test_benchmark_rows(report: dict) -> None:
    steps = report["steps"]
    assert len(steps["bench_layer"]["figures"]["rows"]) == 2 * 5  # E in (4, 8), 5 modes each
    assert len(steps["bench_memory"]["figures"]["rows"]) == 3 * 3  # 3 modes, 3 token counts
    moe = steps["bench_moe_layer"]["figures"]
    assert len(moe["rows"]) == 8 * 2  # 8 routers (Hugging Face's two included), E in (4, 8)
    assert all(row["ms"] > 0 and math.isfinite(row["per_flop_over_hf"]) for row in moe["rows"])
    training = steps["bench_training"]["figures"]["rows"]
    assert [row["model"] for row in training] == ["DenseMoE", "TopKMoE k=1", "TopKMoE k=2", "TopKMoE k=1 cf1.25",
                                                   "ProductOfExperts", "AttentionGateMoE"]
    assert all(row["gmnn_samples_per_s"] > 0 and row["naive_samples_per_s"] > 0 for row in training)
