import ctypes
import gc
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from gmnn import process


def recording_libc(calls: list[tuple[int, int]]) -> SimpleNamespace:
    """A stand-in C library whose ``mallopt`` records its calls and accepts every value."""

    def mallopt(option: int, value: int) -> int:
        calls.append((option, value))
        return 1

    return SimpleNamespace(mallopt=mallopt)


def test_sets_the_three_glibc_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: recording_libc(calls))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(process.ENV, raising=False)
    assert process.tune_malloc()
    # M_MMAP_THRESHOLD at its 32 MiB maximum, M_TRIM_THRESHOLD 1 GiB, M_TOP_PAD 64 MiB
    assert calls == [(-3, 32 * 2**20), (-1, 2**30), (-2, 64 * 2**20)]


def test_the_environment_variable_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: recording_libc(calls))
    monkeypatch.setenv(process.ENV, "0")
    assert not process.tune_malloc()
    assert calls == []


def test_without_glibc_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(process.ENV, raising=False)
    assert not process.tune_malloc()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_accepts_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(process.ENV, raising=False)
    try:
        ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    assert process.tune_malloc()  # mallopt returns 0 for a value glibc refuses (e.g. an mmap threshold > 32 MiB)


@pytest.fixture
def thawed() -> Iterator[None]:
    """The collector as a fresh process has it, nothing frozen, for the test; what the test process froze
    (tests/conftest.py, after collecting) is frozen again afterwards, so that neither the result nor the
    later tests depend on which tests ran before on the same worker."""
    frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    yield
    gc.unfreeze()
    if frozen:
        gc.freeze()


def test_the_command_freezes_the_collector_and_python_calls_do_not(monkeypatch: pytest.MonkeyPatch, thawed: None) -> None:
    import gc

    from gmnn.cli import app as cli

    calls: list[str] = []
    monkeypatch.setattr(cli, "freeze_garbage_collector", lambda: calls.append("freeze"))
    monkeypatch.setattr(cli, "make_cli", lambda args: calls.append(f"cli {args}"))
    monkeypatch.setattr(sys, "argv", ["gmnn", "fit", "--help"])
    cli.main()
    assert calls == ["freeze", "cli None", "freeze"]  # after the imports and when the command is done
    calls.clear()
    cli.main(["fit", "--help"])
    assert calls == ["cli ['fit', '--help']"]
    assert gc.get_freeze_count() == 0, "only the command's own freeze_garbage_collector freezes"
    process.freeze_garbage_collector()
    assert gc.get_freeze_count() > 0


def test_imports_without_collection_pauses_the_collector_and_files_the_new_objects_as_old(thawed: None) -> None:
    from gmnn.cli.process import imports_without_collection

    assert gc.isenabled()
    with imports_without_collection():
        assert not gc.isenabled()
        made = [[] for _ in range(3)]  # containers the collector tracks
    assert gc.isenabled()
    in_oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(o) in in_oldest for o in made), "filed in the oldest generation, no collection walked them"
    with pytest.raises(RuntimeError), imports_without_collection():
        raise RuntimeError("an import failed")
    assert gc.isenabled(), "an error inside still resumes the collector"
    gc.disable()
    try:
        with imports_without_collection():
            pass
        assert not gc.isenabled(), "a collector that was off stays off"
    finally:
        gc.enable()
    frozen_before = []
    gc.freeze()
    try:
        with imports_without_collection():
            made.append([])
        # still in the permanent generation, which get_objects() leaves out (the freeze count itself drops
        # whenever another thread frees a frozen object meanwhile)
        assert not any(o is frozen_before for o in gc.get_objects()), "an earlier freeze is left as it is"
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("module", ["gmnn", "gmnn.cli.app"])
def test_importing_gmnn_runs_no_full_collection(module: str) -> None:
    """Without the pause, the ~0.5M objects of torch, Lightning and torchmetrics cost several full collections."""
    code = ("import gc; full = []; gc.callbacks.append(lambda phase, info: full.append(1) "
            f"if phase == 'start' and info['generation'] == 2 else None); import {module}; "
            "assert gc.isenabled() and gc.get_freeze_count() == 0; print(len(full))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0", result.stdout + result.stderr
