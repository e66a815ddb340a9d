"""``--ckpt_path last`` resumes the *newest* run of the same experiment when one folder holds several runs.

Every run here is a real ``gmnn fit`` (one epoch on 64 toy samples, about half a second). Two experiments
share one ``save_dir``: ``A`` (the toy dense config) and ``B`` (the same with another learning rate). The
checkpoints of the i-th run get the modification time ``T0 + 100 i``, so "newest" does not hang on the
file system's clock resolution; :func:`test_newest_means_the_newest_checkpoint_not_the_highest_version`
sets them out of folder order on purpose.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gmnn.cli import make_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data.init_args.num_samples=64", "--data.init_args.batch_size=32", "--figures.every_n_epochs=0",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
EXPERIMENTS = {"A": [], "B": ["--model.init_args.lr=0.02"]}  # B is another experiment: the saved config differs
T0 = 1_600_000_000  # a fixed past time: the checkpoints of run i are dated T0 + 100 i


def _fit(save_dir: Path, experiment: str, epochs: int, *extra: str):
    """``gmnn fit`` of ``experiment`` (``"A"`` or ``"B"``) for ``epochs`` epochs into ``save_dir``."""
    return make_cli(["fit", "--config", str(ROOT / "configs/toy/dense.yaml"), f"--trainer.max_epochs={epochs}",
                     f"--trainer.logger.init_args.save_dir={save_dir}", *TINY, *EXPERIMENTS[experiment], *extra])


def _date(run: Path, when: float) -> None:
    """Set the modification time of every checkpoint of ``run`` to ``when``."""
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):
        os.utime(checkpoint, (when, when))


def _runs(save_dir: Path, sequence: str) -> list[Path]:
    """Fit the experiments of ``sequence`` (e.g. ``"ABA"``) one after the other; their run folders, in order."""
    runs = []
    for i, experiment in enumerate(sequence):
        cli = _fit(save_dir, experiment, 1)
        run = Path(cli.trainer.log_dir)
        assert run.name == f"version_{i}", "each fit without --ckpt_path starts its own run folder"
        _date(run, T0 + 100 * i)
        runs.append(run)
    return runs


def _assert_resumes(save_dir: Path, experiment: str, expected: Path, versions: int) -> None:
    """``--ckpt_path last`` of ``experiment`` restores ``expected``'s ``last.ckpt`` and trains on in that folder."""
    resumed = _fit(save_dir, experiment, 2, "--ckpt_path", "last")
    assert resumed.trainer.ckpt_path == str(expected / "checkpoints" / "last.ckpt"), (
        f"--ckpt_path last of {experiment} resumed {resumed.trainer.ckpt_path}, not the newest run {expected.name}")
    assert Path(resumed.trainer.log_dir) == expected, "the resumed run continues in its own folder"
    assert resumed.trainer.current_epoch == 2, "it continued from epoch 1 (the checkpoint), not from scratch"
    assert len(list((save_dir / "gmnn").glob("version_*"))) == versions, "resuming starts no new run folder"


@pytest.mark.parametrize("sequence", ["AA", "AAA", "ABAB", "AABBA"])
def test_last_resumes_the_newest_run_of_each_experiment(
    sequence: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With two or three runs of one experiment (alone, or interleaved with runs of another experiment),
    ``--ckpt_path last`` of each experiment resumes the last run of that experiment that was fitted."""
    runs = _runs(tmp_path, sequence)
    for experiment in sorted(set(sequence)):
        newest = runs[sequence.rindex(experiment)]
        capsys.readouterr()
        _assert_resumes(tmp_path, experiment, newest, len(sequence))
        err = capsys.readouterr().err
        for i, (run, other) in enumerate(zip(runs, sequence)):
            if other != experiment and i > sequence.rindex(experiment):  # newer: looked at first, and left alone
                assert f"{run} is another experiment" in err


def test_newest_means_the_newest_checkpoint_not_the_highest_version(tmp_path: Path) -> None:
    """Two runs of one experiment written side by side (e.g. two jobs of an array): the run whose checkpoint
    was written last is resumed, even when its folder number is the lower one."""
    first, second = _runs(tmp_path, "AA")
    _date(first, T0 + 1000)  # version_0 wrote its last checkpoint after version_1 did
    _assert_resumes(tmp_path, "A", first, 2)
