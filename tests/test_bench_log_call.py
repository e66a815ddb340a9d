"""scripts/bench_log_call.py: its timed run counts every self.log call of a gmnn fit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gmnn import pl

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_timed_run_counts_every_log_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bench, overhead = load("bench_log_call"), load("bench_overhead")
    counted = []
    log = pl.LightningModule.log
    # an independent count under the run's own timer (which replaces the method: monkeypatch restores Lightning's)
    monkeypatch.setattr(pl.LightningModule, "log", lambda self, name, *a, **k: (counted.append(name), log(self, name, *a, **k))[1])
    overhead.write_fake_mnist(tmp_path / "data")
    result = bench.child(str(tmp_path / "data"), 1, str(tmp_path / "runs"), 512)
    assert result["calls"] == len(counted) > 0 and result["us_a_call"] > 0
    # 4 training batches of 512 and one validation batch (plus the sanity check's): each logs its loss
    assert counted.count("train/loss") == 4 and counted.count("val/loss") == 2
