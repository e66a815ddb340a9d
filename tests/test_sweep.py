"""scripts/sweep.py: configs x seeds x grid as separate, resumable runs and a results table."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sweep", ROOT / "scripts" / "sweep.py")
sweep = importlib.util.module_from_spec(spec)
sys.modules["sweep"] = sweep  # dataclasses look their module up
spec.loader.exec_module(sweep)

TINY = ["data.init_args.num_samples=200", "trainer.max_epochs=1"]


def test_sweep_runs_every_combination_once_and_resumes(tmp_path: Path) -> None:
    args = ["--configs", str(ROOT / "configs/toy/dense.yaml"), "--seeds", "0", "1",
            "--grid", "model.init_args.lr=0.01,0.02", "--set", *TINY, "--out", str(tmp_path)]
    assert sweep.main(args) == {"ran": 4, "skipped": 0, "failed": 0}
    labels = ["toy-dense__model.lr=0.01", "toy-dense__model.lr=0.02"]
    names = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.glob("*/*/result.json"))
    assert names == [f"{label}/seed{s}" for label in labels for s in (0, 1)]
    assert list((tmp_path / names[0]).glob("events.out.tfevents.*")), "each run logs into its own folder"
    with open(tmp_path / "results.csv") as file:  # gmnn.cli.report's table: one row per run
        rows = list(csv.DictReader(file))
    assert sorted(r["configuration"] for r in rows) == sorted(labels * 2)
    assert all(0 <= float(r["test_error"]) <= 1 for r in rows)
    by_seed = [r["test_error"] + r["sample_entropy"] for r in rows if r["configuration"] == labels[0]]
    assert by_seed[0] != by_seed[1]  # the two seeds of one grid point are different runs
    with open(tmp_path / "results_summary.csv") as file:
        summary = list(csv.DictReader(file))
    assert sorted((r["configuration"], r["runs"]) for r in summary) == [(label, "2") for label in labels]
    assert (tmp_path / "results.md").exists()

    assert sweep.main(args) == {"ran": 0, "skipped": 4, "failed": 0}  # second invocation runs nothing
    (tmp_path / names[2] / "result.json").unlink()  # an interrupted run is run again, alone
    assert sweep.main(args) == {"ran": 1, "skipped": 3, "failed": 0}
    with open(tmp_path / "results.csv") as file:
        assert len(list(csv.DictReader(file))) == 4


def test_grid_is_the_product_of_its_values() -> None:
    runs = sweep.plan([Path("configs/toy/dense.yaml")], [0, 1, 2], {"a.lr": "1,2", "b.batch": "8,16,32"})
    assert len(runs) == 18 and len({r.name for r in runs}) == 18
    assert runs[0].overrides == {"a.lr": "1", "b.batch": "8"} and runs[0].name == "toy-dense__a.lr=1__b.batch=8/seed0"


def test_protocols_times_methods_are_named_after_the_protocols_dataset() -> None:
    protocols = [Path("configs/mnist/protocol.yaml"), Path("configs/cifar10/protocol.yaml")]
    methods = [Path("configs/methods/dense.yaml"), Path("configs/methods/importance.yaml")]
    runs = sweep.plan(methods, [0, 1], {}, protocols)
    assert [r.name for r in runs[::2]] == ["mnist-dense/seed0", "mnist-importance/seed0", "cifar10-dense/seed0",
                                           "cifar10-importance/seed0"]  # the names gmnn.cli.reference maps to its rows
    args = runs[2].cli_args(Path("out"), {})
    assert args[:4] == ["--config", "configs/mnist/protocol.yaml", "--config", "configs/methods/importance.yaml"]


def test_a_protocol_sweep_trains_the_composed_config(tmp_path: Path) -> None:
    args = ["--protocol", str(ROOT / "configs/toy/protocol.yaml"), "--configs", str(ROOT / "configs/methods/importance.yaml"),
            "--set", *TINY, "--out", str(tmp_path)]
    assert sweep.main(args) == {"ran": 1, "skipped": 0, "failed": 0}
    run = tmp_path / "toy-importance" / "seed0"
    record = json.loads((run / "result.json").read_text())
    assert record["protocol"].endswith("configs/toy/protocol.yaml") and record["config"].endswith("methods/importance.yaml")
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    assert model["regularizers"] == {"importance": 0.2} and model["expert_hidden"] == [32, 32]  # method + protocol
    with pytest.raises(SystemExit):  # a missing protocol is named
        sweep.main(["--protocol", str(tmp_path / "nope.yaml"), *args[2:]])
    with pytest.raises(SystemExit):  # two runs in one folder
        sweep.main([*args[:3], str(ROOT / "configs/methods/importance.yaml"), *args[3:]])


def test_malformed_override_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        sweep.main(["--configs", str(ROOT / "configs/toy/dense.yaml"), "--grid", "lr", "--out", str(tmp_path)])


def test_results_md_sets_the_sweep_beside_the_papers_table(tmp_path: Path) -> None:
    out, results = tmp_path / "sweep", tmp_path / "RESULTS.md"
    args = ["--configs", str(ROOT / "configs/toy/dense.yaml"), "--seeds", "0", "1", "--set", *TINY,
            "--out", str(out), "--reference", "mnist", "--results-md", str(results)]
    assert sweep.main(args) == {"ran": 2, "skipped": 0, "failed": 0}
    text = results.read_text()
    assert "python scripts/sweep.py --configs" in text and "2 runs, seeds [0, 1]" in text
    row = next(line for line in text.splitlines() if line.startswith("| toy-dense |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2" and cells[3] == "0.038" and cells[5] == "2.022"  # ours, then the paper's dense row
    assert "±" in cells[2]
    with pytest.raises(SystemExit):
        sweep.main(["--configs", str(ROOT / "configs/toy/dense.yaml"), "--out", str(out), "--results-md", str(results)])


def test_tables_hold_only_the_sweeps_own_runs(tmp_path: Path) -> None:
    """Runs of other seeds in the same folder (e.g. a later, longer sweep) stay out of this sweep's tables."""
    base = ["--configs", str(ROOT / "configs/toy/dense.yaml"), "--set", *TINY, "--out", str(tmp_path)]
    assert sweep.main([*base, "--seeds", "0", "1"])["ran"] == 2
    assert sweep.main([*base, "--seeds", "0", "--results-md", str(tmp_path / "R.md"), "--reference", "mnist"])["skipped"] == 1
    with open(tmp_path / "results.csv") as file:
        assert [r["run"].rsplit("/", 1)[-1] for r in csv.DictReader(file)] == ["seed0"]
    assert "1 runs, seeds [0]" in (tmp_path / "R.md").read_text()
    assert "| toy-dense | 1 |" in (tmp_path / "R.md").read_text()
