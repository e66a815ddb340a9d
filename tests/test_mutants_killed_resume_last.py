"""Tests written for mutmut's mutants of what ``--ckpt_path last`` resumes in ``gmnn/cli/resume.py``
(``run_root``, ``_newest_mtime``, ``newest_readable``, ``find_last_checkpoint``, ``resolve_last``; CONTRIBUTING.md,
"Mutation testing"): each fails on the named mutants.

The functions are called directly with tiny dicts and tiny checkpoint files in ``tmp_path`` (no ``gmnn fit``);
the mutant names are those of ``mutmut results`` (``x_<function>__mutmut_<n>``, shortened here to
``<function> <n>``). File times are set with ``os.utime`` so that "newest" is exact, and each test runs in an
empty current folder (a mutant that loses the config falls back to ``./lightning_logs``, which is then absent).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from gmnn.cli import resume

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
WANDB = "lightning.pytorch.loggers.WandbLogger"
FOLDER_GLOB = "*/checkpoints/*.ckpt"
OTHER_GLOB = "*/*/checkpoints/*.ckpt"


class _Config(dict):
    """A config read like a jsonargparse Namespace: ``config.get(key)`` and ``config.key = value``."""

    def __getattr__(self, key: str) -> Any:
        return self[key]

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty folder, so that ``./lightning_logs`` (the fallback of a lost config) holds nothing."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def _ckpt(path: Path, mtime: int) -> Path:
    """A readable Lightning checkpoint (an empty ``state_dict``) modified at ``mtime`` (seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}}, path)
    os.utime(path, (mtime, mtime))
    return path


def _empty(path: Path, mtime: int) -> Path:
    """An empty file, which ``read_checkpoint`` refuses with "it is empty (0 bytes)"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.utime(path, (mtime, mtime))
    return path


# --- run_root --------------------------------------------------------------------------------------------------


def test_run_root_of_lightnings_default_logger() -> None:
    """Kills ``run_root`` 1-8, 11-14, 17-35 (the trainer, the logger's default ``True``, ``default_root_dir`` and
    its default ``"."`` lost or misspelt, ``is True`` inverted, the folder or the glob changed)."""
    assert resume.run_root({"trainer": {"default_root_dir": "/r"}}) == (Path("/r/lightning_logs"), FOLDER_GLOB)
    assert resume.run_root({"trainer": {}}) == (Path("lightning_logs"), FOLDER_GLOB)


def test_run_root_is_none_when_the_logger_is_off() -> None:
    """Kills ``run_root`` 9, 10, 15, 16, 36, 38, 40 (``logger: false`` or ``logger: []`` not read as "off": the
    logger read as the default ``True``, ``and`` for ``or``, ``[]`` indexed)."""
    assert resume.run_root({"trainer": {"default_root_dir": "/r", "logger": False}}) is None
    assert resume.run_root({"trainer": {"default_root_dir": "/r", "logger": []}}) is None


def test_run_root_of_tensorboard_is_save_dir_and_name() -> None:
    """Kills ``run_root`` 37, 39, 41-75 (a TensorBoard logger, alone or first of a list: its ``init_args``,
    ``save_dir``, ``name`` and default name ``lightning_logs`` lost or misspelt, the list not unwrapped or
    indexed at 1, the folder-logger test inverted, the folder or the glob changed)."""
    tb = {"class_path": TENSORBOARD, "init_args": {"save_dir": "/s", "name": "exp"}}
    assert resume.run_root({"trainer": {"default_root_dir": "/r", "logger": tb}}) == (Path("/s/exp"), FOLDER_GLOB)
    assert resume.run_root({"trainer": {"default_root_dir": "/r", "logger": [tb]}}) == (Path("/s/exp"), FOLDER_GLOB)
    unnamed = {"class_path": TENSORBOARD, "init_args": {"save_dir": "/s"}}
    expected = (Path("/s/lightning_logs"), FOLDER_GLOB)
    assert resume.run_root({"trainer": {"default_root_dir": "/r", "logger": unnamed}}) == expected
    # a TensorBoard logger without save_dir: no folder to look in
    no_dir = {"class_path": TENSORBOARD, "init_args": {"name": "exp"}}
    assert resume.run_root({"trainer": {"default_root_dir": "/r", "logger": no_dir}}) is None


def test_run_root_of_another_logger_is_its_save_dir_else_the_root() -> None:
    """Kills ``run_root`` 60, 76-81 (another logger, W&B here: its ``save_dir`` not taken, or taken when absent,
    the glob changed)."""
    wandb = {"class_path": WANDB, "init_args": {"save_dir": "/w", "project": "p"}}
    assert resume.run_root({"trainer": {"default_root_dir": "/r", "logger": wandb}}) == (Path("/w"), OTHER_GLOB)
    no_dir = {"class_path": WANDB, "init_args": {"project": "p"}}
    assert resume.run_root({"trainer": {"default_root_dir": "/r", "logger": no_dir}}) == (Path("/r"), OTHER_GLOB)


# --- _newest_mtime ---------------------------------------------------------------------------------------------


def test_newest_mtime_is_the_newest_checkpoint_of_the_run(tmp_path: Path) -> None:
    """Kills ``_newest_mtime`` 1-7 (no iterable, the folder or the glob changed: a TypeError, or ``max`` of
    nothing). Files that are not checkpoints do not count."""
    run = tmp_path / "version_0"
    _ckpt(run / "checkpoints" / "a.ckpt", 1000)
    _ckpt(run / "checkpoints" / "b.ckpt", 3000)
    _empty(run / "checkpoints" / "notes.txt", 5000)
    assert resume._newest_mtime(run) == 3000.0


# --- newest_readable -------------------------------------------------------------------------------------------


def test_newest_readable_prefers_last_ckpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Kills ``newest_readable`` 1, 2, 17, 19-23 (``last.ckpt`` lost or left out, every file read as readable or
    unreadable, a fallback line printed although ``last.ckpt`` itself is resumed)."""
    folder = tmp_path / "checkpoints"
    last = _ckpt(folder / "last.ckpt", 1000)
    _ckpt(folder / "epoch=1.ckpt", 2000)  # newer, but last.ckpt comes first
    assert resume.newest_readable(folder) == last
    assert capsys.readouterr().err == ""


def test_newest_readable_without_last_is_the_newest_by_time(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Kills ``newest_readable`` 3-16, 18 (the other checkpoints lost, sorted by name or oldest first, the glob
    changed, ``last.ckpt`` tried although it does not exist). ``a.ckpt`` is newer than ``b.ckpt``, so sorting by
    name (newest name first) or oldest first gives ``b.ckpt``."""
    folder = tmp_path / "checkpoints"
    newer = _ckpt(folder / "a.ckpt", 2000)
    _ckpt(folder / "b.ckpt", 1000)
    assert resume.newest_readable(folder) == newer
    assert capsys.readouterr().err == ""


def test_newest_readable_skips_an_unreadable_last_ckpt_saying_so(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Kills ``newest_readable`` 19, 23-25 (an unreadable ``last.ckpt`` resumed, or the two lines that say so
    missing or replaced by ``None``)."""
    folder = tmp_path / "checkpoints"
    last = _empty(folder / "last.ckpt", 3000)
    other = _ckpt(folder / "epoch=0.ckpt", 1000)
    assert resume.newest_readable(folder) == other
    assert capsys.readouterr().err == (
        f"gmnn: --ckpt_path last: skipping {last}: it is empty (0 bytes)\n"
        f"gmnn: --ckpt_path last: {last} cannot be read, resuming from the newest readable checkpoint {other}\n")


# --- find_last_checkpoint --------------------------------------------------------------------------------------


def test_find_last_checkpoint_in_last_checkpoint_dirpath(tmp_path: Path) -> None:
    """Kills ``find_last_checkpoint`` 1-15, 17-19 (``last_checkpoint.dirpath`` lost or misspelt, which falls
    back to the empty ``./lightning_logs``; the folder test inverted or the path replaced by ``None``)."""
    last = _ckpt(tmp_path / "mine" / "last.ckpt", 1000)
    assert resume.find_last_checkpoint({"last_checkpoint": {"dirpath": str(tmp_path / "mine")}}) == last


def test_find_last_checkpoint_is_none_when_the_logger_is_off(tmp_path: Path) -> None:
    """Kills ``find_last_checkpoint`` 22 (``and`` for ``or``: ``None[0]`` when the logger is off)."""
    _ckpt(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", 1000)
    config = {"trainer": {"default_root_dir": str(tmp_path), "logger": False}}
    assert resume.find_last_checkpoint(config) is None


def test_find_last_checkpoint_resumes_the_run_with_the_newest_checkpoint(tmp_path: Path) -> None:
    """Kills ``find_last_checkpoint`` 20, 21, 23-39, 57-62 (the logger's folder lost, its test inverted, the runs
    sorted by name or oldest first or not at all, a run's config compared without an experiment, the run's
    checkpoint folder lost, the found path dropped). ``version_0`` holds the newest checkpoint."""
    logs = tmp_path / "lightning_logs"
    newest = _ckpt(logs / "version_0" / "checkpoints" / "last.ckpt", 3000)
    _ckpt(logs / "version_0" / "checkpoints" / "epoch=0.ckpt", 500)
    _ckpt(logs / "version_1" / "checkpoints" / "last.ckpt", 2000)
    assert resume.find_last_checkpoint({"trainer": {"default_root_dir": str(tmp_path)}}) == newest


def test_find_last_checkpoint_leaves_another_experiment_alone(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Kills ``find_last_checkpoint`` 40-44, 47-56 (the saved config lost or always "missing", the comparison
    dropped or made with ``None``, the line that names the first three differences changed or lost, ``break``
    for ``continue``). The newer run ``version_1`` is another experiment (4 settings differ); ``version_0``,
    older, is this one."""
    logs = tmp_path / "lightning_logs"
    experiment = {"model": "b", "data": 2, "seed_everything": 2, "optimizer": "adam"}
    mine = _ckpt(logs / "version_0" / "checkpoints" / "last.ckpt", 1000)
    (logs / "version_0" / "config.yaml").write_text(yaml.safe_dump({**experiment, "trainer": {"max_epochs": 1}}))
    _ckpt(logs / "version_1" / "checkpoints" / "last.ckpt", 2000)
    other = {"model": "a", "data": 1, "seed_everything": 1, "optimizer": "sgd"}
    (logs / "version_1" / "config.yaml").write_text(yaml.safe_dump(other))
    config = {"trainer": {"default_root_dir": str(tmp_path), "max_epochs": 5}}
    assert resume.find_last_checkpoint(config, experiment) == mine
    assert capsys.readouterr().err == (
        f"gmnn: --ckpt_path last: {logs / 'version_1'} is another experiment (data: 1 -> 2; model: 'a' -> 'b'; "
        "optimizer: 'sgd' -> 'adam'), not resuming it\n")


def test_find_last_checkpoint_says_a_run_without_config_is_not_compared(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Kills ``find_last_checkpoint`` 43, 45, 46 (the reason of a run without ``config.yaml`` replaced by a
    comparison with ``None`` or misspelt)."""
    logs = tmp_path / "lightning_logs"
    _ckpt(logs / "version_0" / "checkpoints" / "last.ckpt", 1000)
    config = {"trainer": {"default_root_dir": str(tmp_path)}}
    assert resume.find_last_checkpoint(config, {"model": "a"}) is None
    assert capsys.readouterr().err == (f"gmnn: --ckpt_path last: {logs / 'version_0'} is another experiment "
                                       "(no config.yaml to compare with), not resuming it\n")


# --- resolve_last ----------------------------------------------------------------------------------------------


def _tensorboard_config(tmp_path: Path, version: Any = None, with_version: bool = True) -> _Config:
    """``--ckpt_path last`` with a TensorBoard logger writing under ``tmp_path/exp``."""
    init_args: dict[str, Any] = {"save_dir": str(tmp_path), "name": "exp"}
    if with_version:
        init_args["version"] = version
    logger = {"class_path": TENSORBOARD, "init_args": init_args}
    return _Config(ckpt_path="last", trainer={"default_root_dir": str(tmp_path / "root"), "logger": logger})


def test_resolve_last_resumes_the_run_and_its_logger_folder(tmp_path: Path) -> None:
    """Kills ``resolve_last`` 1-11, 13, 15, 26-46, 50-53, 57-60 (``ckpt_path`` not read or not compared with
    ``"last"``, the checkpoint not searched with this config, the found path dropped or not written into
    ``ckpt_path``, the logger's ``version`` not set to the resumed run's folder name)."""
    ckpt = _ckpt(tmp_path / "exp" / "version_3" / "checkpoints" / "last.ckpt", 1000)
    (tmp_path / "exp" / "version_3" / "config.yaml").write_text(yaml.safe_dump({"model": "m"}))
    config = _tensorboard_config(tmp_path)
    assert resume.resolve_last(config, resume_run=True, experiment={"model": "m"}) == ckpt
    assert config.ckpt_path == str(ckpt)
    assert config["trainer"]["logger"]["init_args"] == {"save_dir": str(tmp_path), "name": "exp",
                                                        "version": "version_3"}


def test_resolve_last_keeps_the_logger_version_unless_resuming_an_unset_one(tmp_path: Path) -> None:
    """Kills ``resolve_last`` 47-49, 54-56 (the version set without ``resume_run``, without a ``version`` key, or
    over a version the config sets)."""
    ckpt = _ckpt(tmp_path / "exp" / "version_3" / "checkpoints" / "last.ckpt", 1000)
    config = _tensorboard_config(tmp_path)
    assert resume.resolve_last(config, resume_run=False) == ckpt
    assert config["trainer"]["logger"]["init_args"]["version"] is None
    config = _tensorboard_config(tmp_path, with_version=False)
    assert resume.resolve_last(config, resume_run=True) == ckpt
    assert "version" not in config["trainer"]["logger"]["init_args"]
    config = _tensorboard_config(tmp_path, version="mine")
    assert resume.resolve_last(config, resume_run=True) == ckpt
    assert config["trainer"]["logger"]["init_args"]["version"] == "mine"


def test_resolve_last_starts_a_new_run_when_only_another_experiment_ran(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Kills ``resolve_last`` 12, 14, 16, 22-25 (the experiment not passed on, so another experiment's run is
    resumed; ``fit`` refused; ``ckpt_path`` set to ``""``; the line that says a new run starts changed)."""
    run = tmp_path / "exp" / "version_0"
    _ckpt(run / "checkpoints" / "last.ckpt", 1000)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "other"}))
    config = _tensorboard_config(tmp_path)
    assert resume.resolve_last(config, resume_run=True, experiment={"model": "m"}) is None
    assert config.ckpt_path is None
    assert config["trainer"]["logger"]["init_args"]["version"] is None
    assert capsys.readouterr().err == (
        f"gmnn: --ckpt_path last: {run} is another experiment (model: 'other' -> 'm'), not resuming it\n"
        "gmnn: --ckpt_path last: no earlier run of this experiment to resume, starting a new run\n")


def test_resolve_last_makes_the_experiment_only_for_last(tmp_path: Path) -> None:
    """A function for ``experiment`` is called only for ``ckpt_path: last``, and what it returns picks the run."""
    run = tmp_path / "exp" / "version_0"
    _ckpt(run / "checkpoints" / "last.ckpt", 1000)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "other"}))
    calls: list[str] = []

    def experiment() -> dict[str, str]:
        calls.append("made")
        return {"model": "m"}

    config = _tensorboard_config(tmp_path)
    config.ckpt_path = str(run / "checkpoints" / "last.ckpt")
    assert resume.resolve_last(config, resume_run=True, experiment=experiment) is None and calls == []
    config = _tensorboard_config(tmp_path)
    assert resume.resolve_last(config, resume_run=True, experiment=experiment) is None  # another experiment's run
    assert calls == ["made"] and config.ckpt_path is None


def test_resolve_last_without_an_earlier_run_refuses_validate_test_predict(tmp_path: Path) -> None:
    """Kills ``resolve_last`` 16-21 (no refusal outside ``fit``, or its message changed)."""
    config = _tensorboard_config(tmp_path)
    with pytest.raises(ValueError) as refused:
        resume.resolve_last(config, resume_run=False)
    assert str(refused.value) == (
        "--ckpt_path last: no readable checkpoint of an earlier run of this experiment (same model, data and seed) "
        "under the logger's folder; pass the checkpoint's path")
    assert config.ckpt_path == "last"
