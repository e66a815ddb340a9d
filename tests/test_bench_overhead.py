"""scripts/bench_overhead.py: its floor computes gmnn's model, its table, and a --fake-data run end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

from gmnn.models import DenseMoE

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_overhead", ROOT / "scripts" / "bench_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_floor_is_the_config_model() -> None:
    bench = load_script()
    model = DenseMoE(input_shape=[1, 28, 28], num_classes=10, num_experts=5, expert="conv", expert_hidden=[5, 32],
                     gate="conv", gate_hidden=[128, 32], objective="softmax_of_mixture")
    floor = bench.FloorMoE()
    floor.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("experts.", "gate."))})
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(floor(x), model(x).log_probs)


def test_the_table_gives_medians_and_each_pair() -> None:
    bench = load_script()
    run = lambda *epochs: {"epochs": [{"epoch": e, "train": e - 0.2, "val": 0.1} for e in epochs]}  # noqa: E731
    text = bench.summary({"floor": [run(9.0, 1.0), run(9.0, 1.2)], "gmnn": [run(9.0, 1.5), run(9.0, 1.2)]}, (98, 20))
    assert "| floor | 1.100 |" in text and "| gmnn | 1.350 |" in text  # first epochs left out, medians of runs
    assert "CPU time" not in text  # runs without it
    assert "gmnn / floor epoch time: 1.227 (medians; each interleaved pair: 1.500, 1.000)" in text


def test_a_fake_data_run_reports_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_overhead.py"), "--fake-data", "--repeat", "1", "--epochs", "2",
         "--json", str(out)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| floor |" in result.stdout and "| gmnn |" in result.stdout and "gmnn / floor epoch time" in result.stdout
    assert "gmnn / floor epoch CPU time" in result.stdout and "lightning" not in result.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [len(r["epochs"]) for r in runs["floor"] + runs["gmnn"]] == [2, 2]
    assert all(e["epoch"] > 0 and e["train"] > 0 and e["cpu"] > 0 for r in runs["floor"] + runs["gmnn"] for e in r["epochs"])


def test_the_lightning_side_trains_the_floor_model_and_times_its_epochs(tmp_path: Path, monkeypatch) -> None:
    bench = load_script()
    monkeypatch.setenv(bench.CLOCK_ENV, "")  # restored after the run, which sets it
    bench.write_fake_mnist(tmp_path / "data")
    clock = tmp_path / "clock.json"
    bench.lightning_run(str(tmp_path / "data"), 2, 512, str(clock))
    epochs = json.loads(clock.read_text())["epochs"]
    assert len(epochs) == 2 and all(e["train"] > 0 and e["val"] > 0 and e["epoch"] >= e["train"] + e["val"] for e in epochs)
    module = bench.LightningFloor()
    assert isinstance(module.model, bench.FloorMoE)
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([0, 1, 2, 3, 4, 5])
    log_probs = module.model(x)
    module.validation_step((x[:4], y[:4]), 0)
    module.validation_step((x[4:], y[4:]), 1)  # sums over batches, as the floor's validation pass
    torch.testing.assert_close(module.val_sums["loss"], torch.nn.functional.nll_loss(log_probs, y, reduction="sum"))
    assert int(module.val_sums["correct"]) == int((log_probs.argmax(-1) == y).sum())


def test_the_lightning_side_gets_both_ratios() -> None:
    bench = load_script()
    run = lambda *epochs: {"epochs": [{"epoch": e, "train": e - 0.2, "val": 0.1} for e in epochs]}  # noqa: E731
    text = bench.summary({"floor": [run(9.0, 1.0)], "lightning": [run(9.0, 1.1)], "gmnn": [run(9.0, 1.32)]}, (98, 20))
    assert "lightning / floor epoch time: 1.100" in text and "gmnn / floor epoch time: 1.320" in text
    assert "gmnn / lightning epoch time: 1.200; training steps 1.244, validation 1.000" in text


def test_cpu_times_get_their_own_ratio() -> None:
    bench = load_script()
    run = lambda *cpu: {"epochs": [{"epoch": 2.0, "train": 1.5, "val": 0.1, "cpu": c} for c in cpu]}  # noqa: E731
    text = bench.summary({"floor": [run(9.0, 1.0), run(9.0, 1.0)], "gmnn": [run(9.0, 1.2), run(9.0, 1.1)]}, (98, 20))
    assert "| 1.000 |" in text and "| 1.150 |" in text
    assert "gmnn / floor epoch CPU time: 1.150 (medians; each interleaved pair: 1.200, 1.100)" in text


def test_both_benchmarks_export_refs_with_one_function(tmp_path: Path) -> None:
    bench = load_script()
    spec = importlib.util.spec_from_file_location("bench_startup", ROOT / "scripts" / "bench_startup.py")
    startup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(startup)
    assert bench.export is startup.export and bench.export.__module__ == "gitref"
    tree = bench.export("HEAD", tmp_path / "head")
    assert (tree / "pyproject.toml").is_file() and not (tmp_path / "head.tar").exists()
