"""scripts/mutation_check.py cannot rot: every mutation's target is in today's source, exactly once."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mutation_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("mutation_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def test_list_names_every_mutation_and_each_target_is_found_once(tmp_path: Path) -> None:
    script = _script()
    listed = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [row[0] for row in rows] == [m.name for m in script.MUTATIONS]
    assert len(set(row[0] for row in rows)) == len(rows) >= 6
    for mutation in script.MUTATIONS:
        mutation.source()  # raises MutationError naming the mutation when its target is gone or ambiguous
        assert mutation.replacement != mutation.target
        assert any((ROOT / test).is_file() for test in mutation.tests), f"{mutation.name}: no test file exists"
    # applying one to a copy changes exactly that string, and the result still compiles
    mutation = script.MUTATIONS[0]
    (tmp_path / mutation.path).parent.mkdir(parents=True)
    (tmp_path / mutation.path).write_text((ROOT / mutation.path).read_text())
    mutation.apply(tmp_path)
    assert (tmp_path / mutation.path).read_text() == (ROOT / mutation.path).read_text().replace(
        mutation.target, mutation.replacement)


def test_a_missing_target_fails_loudly(tmp_path: Path) -> None:
    script = _script()
    (tmp_path / "gmnn").mkdir()
    (tmp_path / "gmnn" / "metrics.py").write_text("nothing to mutate here\n")
    broken = script.Mutation("gone", "gmnn/metrics/functional.py", "LN2).float()", "x", ("tests/test_metrics.py",), "")
    with pytest.raises(script.MutationError, match="'gone'.*occurs 0 times in gmnn/metrics/functional.py"):
        broken.apply(tmp_path)


def test_a_run_that_a_failing_test_stopped_is_caught_under_xdist_too() -> None:
    """pytest-xdist ends a ``-x`` run at its first failure with exit 2 (interrupted), not 1: still caught, while
    exit 2 without a failing test (a file that does not collect) stays an error."""
    verdict_of = _script().verdict_of
    failed = "FAILED tests/test_report.py::test_retest - AssertionError\n"
    assert verdict_of(1, failed) == verdict_of(2, failed) == "caught (test_report.py)"
    assert verdict_of(2, "ERROR tests/test_report.py - ImportError\n") == "error (exit 2)"
    assert verdict_of(0, "") == "survived" and verdict_of(5, "") == "untested"
