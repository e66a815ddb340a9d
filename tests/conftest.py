"""Shared fixtures. Tests use tiny generated data only."""

from __future__ import annotations

import gc
import os
import random
import socket
from typing import TYPE_CHECKING

# The processes the tests start (the GPU check's dry run, scripts/bench*.py, fresh interpreters) run on one
# intra-op thread too, as this one does (below): with two OpenMP threads each on a loaded 2-core machine, the
# waiting thread spins at every parallel region (the dry run: 43 s of CPU with torch's default threads, 18 s with
# one). An OMP_NUM_THREADS set outside is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

if TYPE_CHECKING:
    import pytorch_lightning as L

# torch and Lightning are imported where tests run (the xdist workers, or the one process with -n 0), not at the top:
# pytest-xdist's controller loads this file too, before it starts the workers, and needs neither.


@pytest.fixture(autouse=True)
def _seed() -> None:
    import pytorch_lightning as L

    L.seed_everything(0, verbose=False)


def tiny_trainer(**kwargs: object) -> L.Trainer:
    """A quiet CPU trainer for tests."""
    import pytorch_lightning as L

    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)


# Tests that start several processes (DDP over gloo, spawned workers, a pip install): under pytest-xdist they
# share one group, which `--dist loadgroup` runs one after another on a single worker, so that two of them never
# oversubscribe the cores past their hang limits or race for a free port; each fails (pytest-timeout) on a hang.
MULTI_PROCESS = (
    "tests/test_distributed.py::",
    "tests/test_expert_parallel_cli.py::",
    "tests/nn/test_expert_parallel.py::",
    "tests/callbacks/test_routing_monitor.py::test_ddp_metrics_equal_one_process",
    "tests/nn/test_routers.py::test_aux_free_bias_stays_identical_on_two_real_processes",
)
MULTI_PROCESS_TIMEOUT_S = 480
# Modules whose expensive module-scoped fixture (a dry run, trained checkpoints) several tests share: kept on one
# worker, else each worker that gets one of their tests builds the fixture again (the GPU check's dry run: minutes).
SHARED_MODULE_FIXTURE = (
    "tests/test_gpu_check.py::",
    "tests/test_reliability_analysis.py::",
    "tests/test_reliability_checkpoints.py::",
    "tests/test_robustness_checkpoints.py::",
    "tests/data/test_text.py::",
)


# tryfirst: pytest-xdist's worker reads the xdist_group marks in its own pytest_collection_modifyitems (the group
# becomes the test id's @suffix that --dist loadgroup schedules by); run after it, these marks came too late and
# every group was split over the workers (the GPU check's dry run ran once per worker, multi-process tests side by side)
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(MULTI_PROCESS):
            item.add_marker(pytest.mark.xdist_group("multiprocess"))
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(MULTI_PROCESS_TIMEOUT_S))
        elif item.nodeid.startswith(SHARED_MODULE_FIXTURE):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move what the imports and the collection made (torch, Lightning, every test module: about half a million
    objects) out of the collector's reach, as the ``gmnn`` command does after its imports
    (:func:`gmnn.cli.process.freeze_garbage_collector`): the tests' own garbage is still collected, but a full
    collection no longer walks the imports each time, nor does the worker's exit.

    Also one intra-op thread for the tests' own small ops: as fast, and no oversubscription of CI's 2 cores."""
    import torch

    torch.set_num_threads(1)
    gc.freeze()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Freeze what the tests left too: pytest's last step collects garbage five times over, to report a failing
    ``__del__`` of cyclic garbage still alive, which on a worker's heap of the whole suite takes seconds at the
    end of every run. Such a finalizer that raises at that very last moment goes unreported; those that raise
    during the suite are reported as before (pytest checks after each test)."""
    gc.freeze()


def free_rendezvous_port() -> int:
    """A free TCP port below the kernel's ephemeral range, for a multi-process test's rendezvous.

    Lightning (and ``socket.bind(("", 0))``) take a port from the ephemeral range, as every other process
    that binds one does (Jupyter's kernels in the docs build, anything the OS hands a port to): between the
    moment a port is found free and the moment rank zero binds it, another process may take it. Ports
    below that range are never handed out by the kernel, so only another test asking here could take it.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except OSError:
        ephemeral_low = 32768
    low, high = max(1024, ephemeral_low - 12000), ephemeral_low - 1
    for port in random.Random().sample(range(low, high), 200):  # an unseeded generator: tests reseed the global one
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high} for a multi-process test's rendezvous")


#: ``MASTER_PORT`` as set outside the tests (a port the user pins for every multi-process command), or ``None``
PINNED_MASTER_PORT = os.environ.get("MASTER_PORT") or None


def rendezvous_port() -> int:
    """The port a multi-process command of the tests meets on: the one pinned outside the tests
    (:data:`PINNED_MASTER_PORT`), else a fresh :func:`free_rendezvous_port`."""
    return int(PINNED_MASTER_PORT) if PINNED_MASTER_PORT else free_rendezvous_port()


@pytest.fixture(autouse=True)
def _rendezvous_port(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each multi-process test's processes meet on a port of their own (:func:`rendezvous_port`),
    through ``MASTER_PORT``, which Lightning's DDP and the processes the test starts inherit."""
    if request.node.nodeid.startswith(MULTI_PROCESS):
        monkeypatch.setenv("MASTER_PORT", str(rendezvous_port()))
