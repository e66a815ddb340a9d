"""DDP on CPU, run as users run it: the shipped config's defaults (progress bar, model summary, figures,
finite-loss guard), two gloo processes, and a time limit that turns a hang into a failure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gmnn.data import ToyDataModule
from gmnn.models import MoEModule
from tests import conftest
from tests.conftest import free_rendezvous_port, rendezvous_port, tiny_trainer

ROOT = Path(__file__).resolve().parents[1]
# 4007 samples: 601 validation and 601 test samples, an odd number, so a padding sampler would repeat one
DATA = dict(num_samples=4007, batch_size=128)
HANG_LIMIT_S = 240


def run_gmnn(args: list[str], cwd: Path, timeout: float = HANG_LIMIT_S, succeed: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m gmnn.cli ARGS`` in its own process group; a run past ``timeout`` is killed and fails the test.

    ``succeed=False``: the run must fail (exit code != 0), in time.
    """
    # each command its own rendezvous port (tests/conftest.py), none left in TIME_WAIT by the command before
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MASTER_PORT": str(rendezvous_port())}
    process = subprocess.Popen(
        [sys.executable, "-m", "gmnn.cli", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # gloo collectives ignore SIGTERM
        output, _ = process.communicate()
        pytest.fail(f"`gmnn {' '.join(args[:3])} ...` hung: killed after {timeout:.0f} s\n{output[-3000:]}")
    assert (process.returncode == 0) == succeed, output[-4000:]
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def _last_logged(run_dir: Path, prefix: str) -> dict[str, float]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith(prefix)}


def _images(run_dir: Path) -> list[str]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return events.Tags()["images"]


def _ddp(subcommand: str, *extra: str) -> list[str]:
    return [
        subcommand, "--config", str(ROOT / "configs/toy/dense.yaml"),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu",
        *(f"--data.init_args.{key}={value}" for key, value in DATA.items()), *extra,
    ]


def _check_matches_one_process(logged: dict[str, float], single: dict[str, float]) -> None:
    assert set(logged) <= set(single), "every metric logged under DDP must exist in one process"
    for name, value in logged.items():  # summed metric states over unpadded shards = the whole set's value
        torch.testing.assert_close(value, single[name], rtol=1e-5, atol=1e-6, msg=name)


def test_each_multi_process_test_meets_on_a_port_below_the_ephemeral_range() -> None:
    """Jupyter's kernels (the docs build, beside these tests) and Lightning's own choice take ephemeral ports."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    port = int(os.environ["MASTER_PORT"])  # set for this test by tests/conftest.py
    assert port == int(conftest.PINNED_MASTER_PORT) if conftest.PINNED_MASTER_PORT else 1024 <= port < low
    again = {free_rendezvous_port() for _ in range(5)}
    assert all(1024 <= p < low for p in again) and len(again) > 1, "a fixed port would collide between runs"


def test_a_port_pinned_outside_the_tests_is_kept_by_every_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MASTER_PORT`` set before the tests start is the port of every command :func:`run_gmnn` starts; unset,
    each command gets a fresh one below the ephemeral range."""
    ports = []

    class Recorded:
        def __init__(self, args: list[str], env: dict[str, str], **kwargs: object) -> None:
            ports.append(env["MASTER_PORT"])
            self.args, self.returncode, self.pid = args, 0, 0

        def communicate(self, timeout: float | None = None) -> tuple[str, str]:
            return "", ""

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    monkeypatch.setattr(conftest, "PINNED_MASTER_PORT", "29517")
    run_gmnn(["fit"], cwd=tmp_path)
    run_gmnn(["fit"], cwd=tmp_path)
    monkeypatch.setattr(conftest, "PINNED_MASTER_PORT", None)
    run_gmnn(["fit"], cwd=tmp_path)
    run_gmnn(["fit"], cwd=tmp_path)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert ports[:2] == ["29517", "29517"]
    assert all(1024 <= int(p) < low for p in ports[2:]) and ports[2] != ports[3]


@pytest.mark.slow
def test_readme_ddp_command_finishes_and_its_metrics_equal_one_process(tmp_path: Path) -> None:
    """The command of docs/distributed.md (two CPU processes), defaults on (the progress bar Lightning picks, figures, summary), 2 epochs."""
    result = run_gmnn(_ddp("fit", "--trainer.max_epochs=2"), cwd=tmp_path)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout, "the second process did not start"
    for noise in ("is deprecated", "It is recommended to use `self.log(", "Warning:"):
        assert noise not in result.stdout, f"the documented DDP command prints {noise!r}"
    runs = list((tmp_path / "runs" / "gmnn").iterdir())
    assert [run.name for run in runs] == ["version_0"], "only rank zero may create a run folder"
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1, "only rank zero may write events"
    assert "val/decomposition" in _images(runs[0]) and "val/decision_regions" in _images(runs[0])

    last = runs[0] / "checkpoints" / "last.ckpt"
    model = MoEModule.load_from_checkpoint(last)
    data = ToyDataModule(problem="split_discs", **DATA)  # the problem of configs/toy/dense.yaml
    (val,) = tiny_trainer().validate(model, datamodule=data, verbose=False)
    logged = _last_logged(runs[0], "val/")
    assert {"val/loss", "val/acc", "val/mutual_information"} <= set(logged)
    _check_matches_one_process(logged, val)

    run_gmnn(_ddp("test", f"--ckpt_path={last}"), cwd=tmp_path)
    assert [run.name for run in (tmp_path / "runs" / "gmnn").iterdir()] == ["version_0"]
    test_run = runs[0] / "test"  # testing a run's checkpoint logs into that run
    (test,) = tiny_trainer().test(model, datamodule=data, verbose=False)
    logged = _last_logged(test_run, "test/")
    assert {"test/loss", "test/acc", "test/mutual_information"} <= set(logged)
    _check_matches_one_process(logged, test)


@pytest.mark.slow
def test_ddp_with_tqdm_bar_revival_and_init_search_finishes(tmp_path: Path) -> None:
    """Every gmnn collective at once (guard, revival, init search, figures) beside the tqdm bar."""
    result = run_gmnn(
        _ddp(
            "fit", "--trainer.max_epochs=2", "--trainer.log_every_n_steps=3",
            "--trainer.callbacks+=pytorch_lightning.callbacks.TQDMProgressBar",
            "--trainer.callbacks+=gmnn.callbacks.InitSearch", "--trainer.callbacks.candidates=2",
            "--trainer.callbacks.steps=2",
            "--model.init_args.revive_below=0.2", "--model.init_args.revive_epochs=2",
        ),
        cwd=tmp_path,
    )
    assert "InitSearch: validation NLL of the 2 initialisations" in result.stdout
    logged = _last_logged(tmp_path / "runs" / "gmnn" / "version_0", "train/")
    assert "train/revived_experts" in logged and "train/init_search_best_nll" in logged


@pytest.mark.parametrize("multi_process", [True, False])
def test_a_successful_multi_process_command_ends_after_its_exit_handlers_without_finalizing(
    multi_process: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the command line, a command that ran in a process group joins its other threads, runs the ``atexit``
    handlers and ends with ``os._exit(0)``, before gloo's lingering worker threads can meet a finalizing
    interpreter (exit -6 after a successful run); a one-process command exits as usual."""
    import threading

    import gmnn.cli.app

    events: list[str] = []
    worker = threading.Thread(target=lambda: (time.sleep(0.2), events.append("thread joined")))

    class Exited(Exception):
        pass

    def exit_now(status: int) -> None:
        events.append(f"os._exit({status})")
        raise Exited

    def command(args: object) -> None:
        events.append("command")
        worker.start()
        if multi_process:
            store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
            torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)

    monkeypatch.setattr(gmnn.cli.app, "make_cli", command)
    monkeypatch.setattr(gmnn.cli.app, "freeze_garbage_collector", lambda: None)  # not in the test process
    monkeypatch.setattr(gmnn.cli.app.atexit, "_run_exitfuncs", lambda: events.append("atexit handlers"))
    monkeypatch.setattr(gmnn.cli.app.os, "_exit", exit_now)
    monkeypatch.setattr(sys, "argv", ["gmnn", "fit"])
    try:
        if multi_process:
            with pytest.raises(Exited):
                gmnn.cli.app.main()
        else:
            gmnn.cli.app.main()  # returns at once: the interpreter's own exit joins the thread
        when_main_ended = list(events)
    finally:
        worker.join()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert not torch.distributed.is_initialized()
    expected = ["command", "thread joined", "atexit handlers", "os._exit(0)"] if multi_process else ["command"]
    assert when_main_ended == expected


@pytest.mark.parametrize("fails", [False, True])
def test_cli_destroys_the_process_group_only_after_a_successful_command(
    fails: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left to interpreter exit, gloo can abort a finished run ("terminate called without an active
    exception", exit -6); after an error another rank may still be in a collective, so it stays."""
    import gmnn.cli
    import gmnn.cli.app

    def command(args: object) -> None:
        if fails:
            raise ValueError("bad input")

    monkeypatch.setattr(gmnn.cli.app, "make_cli", command)
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with contextlib.suppress(SystemExit):
            gmnn.cli.main(["fit"])
        assert torch.distributed.is_initialized() == fails
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
