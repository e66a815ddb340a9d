"""The benchmark's naive references compute the same math, and ``scripts/bench.py --quick`` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.naive import NAIVE
from gmnn.models import AttentionGateMoE, DenseMoE, ProductOfExperts, TopKMoE

ROOT = Path(__file__).resolve().parents[1]
COMMON = dict(input_shape=[1, 8, 8], num_classes=3, num_experts=4, expert="conv", expert_hidden=[5, 6],
              gate="conv", gate_hidden=[7])


@pytest.mark.parametrize(
    ("cls", "extra"), [(DenseMoE, {}), (TopKMoE, {"k": 2}), (ProductOfExperts, {}), (AttentionGateMoE, {})],
    ids=["dense", "top2", "product", "attention"],
)
def test_naive_reference_matches_the_package(cls: type, extra: dict) -> None:
    model = cls(**COMMON, **extra).train()
    naive = NAIVE[cls](**COMMON, **extra).train()
    naive.load_state_dict(model.state_dict())
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    out, ref = model(x), naive(x)
    torch.testing.assert_close(out.log_probs, ref.log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.gate_probs, ref.gate_probs, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(torch.nn.functional.nll_loss(out.log_probs, y), list(model.parameters()), allow_unused=True)
    ref_grads = torch.autograd.grad(torch.nn.functional.nll_loss(ref.log_probs, y), list(naive.parameters()), allow_unused=True)
    for a, b in zip(grads, ref_grads):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_quick_benchmark_writes_its_tables(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts/bench.py"), "--quick", "--json", str(path)],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "| DenseMoE |" in result.stdout and "| 8 | top-2 |" in result.stdout
    data = json.loads(path.read_text())
    assert {r["model"] for r in data["training_rows"]} == {"DenseMoE", "TopKMoE k=1", "TopKMoE k=2", "TopKMoE k=1 cf1.25",
                                                   "ProductOfExperts", "AttentionGateMoE"}
    assert len(data["layer_rows"]) == 2 * 5 and all(r["ms"] > 0 and r["saved_mib"] > 0 for r in data["layer_rows"])


def test_the_end_to_end_summary_reports_medians_and_each_interleaved_pair() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_end_to_end", ROOT / "scripts" / "bench_end_to_end.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.summary({"gmnn": [20.0, 18.0, 25.0], "reference": [100.0, 126.0, 110.0]}, epochs=10)
    assert "gmnn       median    20.0 s" in text and "25000 samples/s" in text  # 500k samples / 20 s
    assert "reference  median   110.0 s" in text
    assert "speed: 5.50x (medians; each interleaved pair: 5.00x, 7.00x, 4.40x)" in text
    alone = module.summary({"gmnn": [16.0]}, epochs=1)
    assert "3125 samples/s" in alone and "speed" not in alone


def test_the_quick_cost_table_covers_every_axis_and_both_mixture_paths(tmp_path: Path) -> None:
    path = tmp_path / "cost.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts/bench_moe_cost.py"), "--quick", "--json", str(path)],
                            capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "| gmnn / floor |" in result.stdout and "| batched / looped |" in result.stdout
    data = json.loads(path.read_text())
    assert {row["axis"] for row in data["token"]} == {"base", "E", "k", "tokens", "d"}
    assert all(row["ms"]["gmnn"] > 0 and row["ms"]["floor"] > 0 for row in data["token"])
    assert data["token"][0]["peak_mib"]["gmnn"] >= 0 and [row["E"] for row in data["mixture"]] == [2, 4]


def test_the_figure_benchmark_times_both_figures_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_figures", ROOT / "scripts" / "bench_figures.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        bench.main(["--repeat", "1", "--experts", "2", "--classes", "3", "--grid", "6", "--points", "20"])
    finally:
        torch.set_num_threads(threads)
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| decision")
            or line.startswith("| decomposition")]
    assert [row[0].strip() for row in rows] == ["decision regions", "decomposition"]
    for _, new, kept, ratio in rows:
        assert float(new) > 0 and float(kept) > 0
        shown = float(ratio.strip().removesuffix("x"))  # of the unrounded medians: within the rounding of the columns
        assert abs(shown - float(new) / float(kept)) <= 0.03 * shown + 0.01
    with pytest.raises(SystemExit):
        bench.main(["--repeat", "0"])
