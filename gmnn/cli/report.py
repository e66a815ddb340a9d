"""The results table of finished runs: ``gmnn report RUN_DIRS... [--out DIR] [--retest]``.

Reads each run's TensorBoard scalars or CSVLogger ``metrics.csv`` (the last value of each tag), or with
``--retest`` tests the run's ``checkpoints/last.ckpt`` when it logged no test
metrics, and writes the paper-style table per run and as mean ± std per
configuration to ``results.csv``, ``results.md`` and ``results.png``.
Only regular files are read; a file that cannot be read or is damaged
(a truncated or corrupt events file, a malformed ``metrics.csv``) is skipped
with one line on stderr, and a run none of whose files could be read is no run.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import statistics
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import yaml

from gmnn.cli.reference import PAPER_MNIST, REFERENCES, Value, read_reference_csv  # noqa: F401 (PAPER_MNIST re-exported)

COLUMNS: dict[str, str] = {
    "train_error": "train error",
    "test_error": "test error",
    "mutual_information": "MI (bits)",
    "sample_entropy": "sample entropy",
    "expert_usage": "expert usage",
    "per_task_entropy": "per-task entropy",
}


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (those holding TensorBoard event files or a CSVLogger ``metrics.csv``) at or below ``paths``.

    Only regular files count: a FIFO, socket or device named like a run file is ignored.
    """
    runs: set[Path] = set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise ValueError(f"RUN_DIRS: {path} is not a directory")
        for pattern in (EVENTS, METRICS_CSV):
            runs.update(found.parent for found in path.rglob(pattern) if found.is_file())
    return sorted({_owning_run(run) for run in runs})


DERIVED = ("validate", "test", "predict")  # ``gmnn test --ckpt_path`` logs into <run>/test/


def _owning_run(folder: Path) -> Path:
    """A run's ``test``/``validate``/``predict`` sub-folder belongs to the run that trained the checkpoint."""
    return folder.parent if folder.name in DERIVED and (folder.parent / "config.yaml").is_file() else folder


METRICS_CSV = "metrics.csv"
EVENTS = "events.out.tfevents.*"


class DamagedFile(ValueError):
    """A run file that can be opened but not trusted (truncated, failing its checksum, malformed)."""


def skip(path: Path, error: Exception) -> None:
    """Say on stderr, in one line, that ``path`` is left out of the table and why."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    print(f"gmnn report: skipped {path}: {reason}", file=sys.stderr)


def _record(handle: BinaryIO) -> bytes | None:
    """The next record of a TFRecord file (``None`` at its end); ``DamagedFile`` when it is cut short or corrupt."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    offset = handle.tell()
    header = handle.read(8)
    if not header:
        return None
    header_crc = handle.read(4)
    if len(header) < 8 or len(header_crc) < 4:
        raise DamagedFile(f"truncated record at byte {offset}")
    if masked_crc32c(header) != struct.unpack("<I", header_crc)[0]:
        raise DamagedFile(f"corrupt record header at byte {offset} (checksum mismatch)")
    (length,) = struct.unpack("<Q", header)
    data, data_crc = handle.read(length), handle.read(4)
    if len(data) < length or len(data_crc) < 4:
        raise DamagedFile(f"truncated record at byte {offset}")
    if masked_crc32c(data) != struct.unpack("<I", data_crc)[0]:
        raise DamagedFile(f"corrupt record at byte {offset} (checksum mismatch)")
    return data


def check_event_file(path: Path) -> None:
    """Raise ``DamagedFile`` unless every record of a TensorBoard events file is whole and passes its checksum.

    TensorBoard's reader stops silently at the first truncated or corrupt record and returns the
    values before it (a killed writer's file reads as an earlier epoch's numbers), so the file is
    checked first. A writer always starts with a version record: an empty file is damaged too.
    ``OSError`` (e.g. ``PermissionError``) passes through.
    """
    with path.open("rb") as handle:
        records = 0
        while _record(handle) is not None:
            records += 1
    if records == 0:
        raise DamagedFile("empty events file (no records)")


def read_csv_scalars(path: Path) -> dict[str, float]:
    """The last value of every column of a CSVLogger ``metrics.csv`` (rows hold only the metrics logged then)."""
    values: dict[str, float] = {}
    with path.open(newline="") as handle:
        try:
            for row in csv.DictReader(handle):
                values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
        except (csv.Error, UnicodeDecodeError, ValueError, TypeError) as error:
            raise DamagedFile(f"malformed CSV ({error})") from error
    for counter in ("epoch", "step"):
        values.pop(counter, None)
    return values


def read_event_scalars(path: Path) -> dict[str, tuple[float, float]]:
    """The last ``(wall time, value)`` of every scalar tag of one events file (checked by :func:`check_event_file`)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    check_event_file(path)
    events = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
    return {tag: (events.Scalars(tag)[-1].wall_time, events.Scalars(tag)[-1].value) for tag in events.Tags()["scalars"]}


def _timed_csv_scalars(path: Path) -> dict[str, tuple[float, float]]:
    """:func:`read_csv_scalars`, each value timed by the file's modification time."""
    mtime = path.stat().st_mtime
    return {tag: (mtime, value) for tag, value in read_csv_scalars(path).items()}


def run_files(run_dir: Path) -> list[Path]:
    """The regular ``metrics.csv`` and events files of a run and of its ``test``/... folders, tables first."""
    tables = [run_dir / METRICS_CSV, *(run_dir / stage / METRICS_CSV for stage in DERIVED)]
    events = [*run_dir.glob(EVENTS), *(f for stage in DERIVED for f in run_dir.glob(f"{stage}/{EVENTS}"))]
    return [path for path in [*tables, *sorted(events)] if path.is_file()]


def read_run(run_dir: Path) -> tuple[dict[str, float], int]:
    """:func:`read_scalars` and how many of the run's files were read; each file skipped is said on stderr."""
    values: dict[str, tuple[float, float]] = {}
    read = 0
    for path in run_files(run_dir):
        try:
            found = _timed_csv_scalars(path) if path.name == METRICS_CSV else read_event_scalars(path)
        except (OSError, DamagedFile) as error:
            skip(path, error)
            continue
        read += 1
        for tag, (time, value) in found.items():
            if tag not in values or time >= values[tag][0]:
                values[tag] = (time, value)
    return {tag: value for tag, (_, value) in values.items()}, read


def read_scalars(run_dir: Path) -> dict[str, float]:
    """The last logged value of every scalar tag of a run (its and its ``test``/... folders' event files and ``metrics.csv``).

    Files that cannot be read or are damaged are left out, each with one line on stderr.
    """
    return read_run(run_dir)[0]


def retest(run_dir: Path) -> dict[str, float]:
    """Test ``run_dir/checkpoints/last.ckpt`` on the data of the run's ``config.yaml``; the test metrics by name.

    The model comes from the checkpoint (its class and hyperparameters are recorded there), the data
    module from the config's ``data`` entry under the run's seed; nothing is logged or written.
    """
    from gmnn import pl
    from gmnn.models import MoEModule

    config, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not config.exists() or not checkpoint.exists():
        raise ValueError(f"--retest needs {config} and {checkpoint}")
    settings = yaml.safe_load(config.read_text())
    data = settings.get("data") if isinstance(settings, dict) else None
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"--retest: {config} has no data class_path")
    module_name, _, class_name = data["class_path"].rpartition(".")
    pl.seed_everything(settings.get("seed_everything"), verbose=False)
    datamodule = getattr(importlib.import_module(module_name), class_name)(**(data.get("init_args") or {}))
    trainer_settings = settings.get("trainer") or {}
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=str(run_dir), accelerator=trainer_settings.get("accelerator", "auto"),
                         precision=trainer_settings.get("precision"), devices=1)
    model = MoEModule.load_from_checkpoint(checkpoint, map_location="cpu")
    return trainer.test(model, datamodule=datamodule, verbose=False)[0]


def run_row(run_dir: Path, scalars: dict[str, float]) -> dict[str, object]:
    """One table row: run, configuration (the run folder's parent name) and the columns (NaN when missing)."""
    row: dict[str, object] = {"run": str(run_dir), "configuration": run_dir.parent.name}
    for stage in ("train", "test"):
        accuracy = scalars.get(f"{stage}/acc", scalars.get(f"{stage}/acc_epoch"))
        row[f"{stage}_error"] = 1.0 - accuracy if accuracy is not None else math.nan
    for name in list(COLUMNS)[2:]:
        row[name] = scalars.get(f"test/{name}", math.nan)
    return row


def summarise(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Mean, sample standard deviation (0 for a single run) and number of runs ``n`` of every column per configuration.

    A run that did not log a column is left out of that column's mean: ``{column}_n`` says how many runs it is over.
    """
    groups: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault(str(row["configuration"]), []).append(row)
    summary = []
    for name, members in groups.items():
        entry: dict[str, object] = {"configuration": name, "runs": len(members)}
        for column in COLUMNS:
            values = [float(m[column]) for m in members if not math.isnan(float(m[column]))]
            entry[f"{column}_mean"] = statistics.fmean(values) if values else math.nan
            entry[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else math.nan)
            entry[f"{column}_n"] = len(values)
        summary.append(entry)
    return summary


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def _mean_std(entry: dict[str, object], column: str) -> str:
    """``mean ± std`` of a summary column, with ``(n=K)`` when it is over fewer runs than the configuration has."""
    cell = f"{_fmt(float(entry[column + '_mean']))} ± {_fmt(float(entry[column + '_std']))}"
    count = entry.get(f"{column}_n")
    return cell if count is None or not 0 < int(count) < int(entry["runs"]) else f"{cell} (n={count})"


def markdown(rows: Sequence[dict[str, object]], summary: Sequence[dict[str, object]]) -> str:
    """The per-configuration (mean ± std, ``(n=K)`` where a column is over K of the runs) and per-run tables as Markdown."""
    head = " | ".join(COLUMNS.values())
    lines = ["| configuration | runs | " + head + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for entry in summary:
        cells = [_mean_std(entry, c) for c in COLUMNS]
        lines.append(f"| {entry['configuration']} | {entry['runs']} | " + " | ".join(cells) + " |")
    lines += ["", "| run | configuration | " + head + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(f"| {row['run']} | {row['configuration']} | " + " | ".join(_fmt(float(row[c])) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(summary: Sequence[dict[str, object]], path: Path) -> None:
    """Bar charts of test error and mutual information (mean ± std) per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(s["configuration"]) for s in summary]
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.2 * len(names), 3.2))
    for ax, column in zip(axes, ("test_error", "mutual_information")):
        means = [float(s[f"{column}_mean"]) for s in summary]
        stds = [float(s[f"{column}_std"]) for s in summary]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3)
        ax.set(title=COLUMNS[column], xticks=range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



def load_reference(reference: str) -> dict[str, dict[str, Value]]:
    """A reference table by name (``mnist``) or from a reference results CSV (``.../mnist_final_results.csv``)."""
    if reference in REFERENCES:
        return REFERENCES[reference]
    if reference.endswith(".csv") and Path(reference).is_file():
        return read_reference_csv(reference)
    raise ValueError(f"reference must be one of {sorted(REFERENCES)} or an existing .csv file, got {reference!r}")

COMPARED = ("test_error", "mutual_information", "sample_entropy", "expert_usage")


def _ref(value: Value | None) -> str:
    return value if isinstance(value, str) else _fmt(math.nan if value is None else value)


def comparison_markdown(summary: Sequence[dict[str, object]], reference: dict[str, dict[str, Value]]) -> str:
    """Mean ± std per configuration next to a published reference, matched by the name after the last ``-``.

    A configuration ``mnist-dense`` is compared with ``reference["dense"]``; a reference number that
    measures something else (``gmnn.cli.reference.NOT_COMPARABLE``) is shown as ``n/c``.
    """
    head = " | ".join(f"{COLUMNS[c]} | paper" for c in COMPARED)
    lines = [f"| configuration | runs | {head} |", "|---|---|" + "---|---|" * len(COMPARED)]
    for entry in summary:
        paper = reference.get(str(entry["configuration"]).rsplit("-", 1)[-1], {})
        cells = [f"{_mean_std(entry, c)} | {_ref(paper.get(c))}" for c in COMPARED]
        lines.append(f"| {entry['configuration']} | {entry['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(
    paths: Sequence[str | Path], out: str | Path = ".", retest_missing: bool = False, reference: str | None = None
) -> list[dict[str, object]]:
    """Write ``results.csv`` (per run), ``results_summary.csv``, ``results.md`` and ``results.png`` to ``out``.

    With ``reference`` (see :func:`load_reference`), ``results.md`` starts with the comparison table.
    Returns the per-run rows; :func:`summarise` gives the per-configuration summary.
    """
    table = load_reference(reference) if reference is not None else None
    runs = find_runs(paths)
    if not runs:
        raise ValueError(f"RUN_DIRS: no TensorBoard event files under {[str(p) for p in paths]}")
    rows = []
    for run_dir in runs:
        scalars, read = read_run(run_dir)
        if retest_missing and "test/acc" not in scalars:
            scalars.update(retest(run_dir))
        elif read == 0:
            continue  # every file of the run was skipped, each with its line: no row, not counted as a run
        rows.append(run_row(run_dir, scalars))
    if not rows:
        raise ValueError(f"RUN_DIRS: no readable run under {[str(p) for p in paths]}")
    summary = summarise(rows)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows)
    write_csv(out / "results_summary.csv", summary)
    comparison = "" if table is None else comparison_markdown(summary, table) + "\n"
    (out / "results.md").write_text(comparison + markdown(rows, summary))
    plot(summary, out / "results.png")
    return rows


def main(args: Sequence[str] | None = None) -> None:
    """``gmnn report``: parse the command line and write the results table."""
    parser = argparse.ArgumentParser(prog="gmnn report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run folders (runs/NAME/version_N), or folders above them")
    parser.add_argument("--out", default=".", help="folder for results.csv/.md/.png (default: .)")
    parser.add_argument("--retest", action="store_true", help="test last.ckpt of runs that logged no test metrics")
    parser.add_argument(
        "--reference", help="compare with a published table: 'mnist', or the reference's results .csv (n/c: not comparable)"
    )
    options = parser.parse_args(args)
    report(options.run_dirs, options.out, options.retest, options.reference)
    print((Path(options.out) / "results.md").read_text())
