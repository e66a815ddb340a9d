"""The paper-mode MNIST table: each row's reference number, gmnn in paper mode (mean ± std, best of seeds by validation).

Example (after ``scripts/sweep.py --configs configs/paper/mnist/*.yaml ... --out sweeps/paper``)::

    python scripts/paper_table.py sweeps/paper

The reference numbers are those of :data:`gmnn.cli.reference.PAPER_MNIST`
(``aaai_2022/results/mnist/mnist_final_results.csv`` of yamsgithub/modular_deep_learning), by the row
each ``configs/paper/mnist/*.yaml`` reproduces (its header names it): one run kept out of 10, and the
std of the test error over those 10. The best-of-seeds column here picks the seed with the lowest
*validation* error (the final epoch's ``val/acc``) and reports that seed's test numbers: the test set
never chooses.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import this checkout's gmnn
    sys.path.insert(0, str(ROOT))

from gmnn.cli.reference import MNIST_CSV, MNIST_ROWS, PAPER_MNIST  # noqa: E402
from gmnn.cli.report import find_runs, read_scalars, run_row, summarise  # noqa: E402



# configs whose reference row is another config's (the loss-gate models of the '_loss_gate' rows)
SAME_ROW = {"top1_loss_gate": "top1_stochastic", "stochastic_loss_gate": "stochastic"}


def rows_of(sweep: Path) -> list[dict[str, object]]:
    """One row per finished run below ``sweep``: ``run_row``'s columns plus ``val_error`` and ``wall_s``."""
    rows = []
    for run in find_runs([sweep]):
        if not (run / "result.json").is_file():
            continue  # unfinished
        scalars = read_scalars(run)
        row = run_row(run, scalars)
        row["val_error"] = 1.0 - scalars["val/acc"] if "val/acc" in scalars else math.nan
        row["wall_s"] = float(json.loads((run / "result.json").read_text()).get("wall_s", math.nan))
        rows.append(row)
    return rows


def best_by_validation(rows: Sequence[dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per configuration, the run with the lowest validation error (the first of equals)."""
    best: dict[str, dict[str, object]] = {}
    for row in rows:
        name = str(row["configuration"])
        if name not in best or float(row["val_error"]) < float(best[name]["val_error"]):
            best[name] = row
    return best


def _f(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def table(rows: Sequence[dict[str, object]]) -> str:
    """The Markdown table: reference, paper-mode mean ± std, best of seeds by validation error."""
    best = best_by_validation(rows)
    lines = [
        f"| row | reference row (`{MNIST_CSV}`) | ref. test error (std over its 10 runs) | ref. MI (bits) | seeds "
        "| test error | MI (bits) | best of seeds by val error: test error / MI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in summarise(rows):
        config = str(entry["configuration"])
        name = config.rsplit("-", 1)[-1]
        ref = PAPER_MNIST.get(SAME_ROW.get(name, name), {})
        ref_error, ref_std, ref_mi = (float(ref.get(k, math.nan)) for k in ("test_error", "test_error_std", "mutual_information"))
        chosen = best[config]
        lines.append(
            f"| {name} | `{MNIST_ROWS.get(SAME_ROW.get(name, name), '–')}` | {_f(ref_error)} ({_f(ref_std)}) | {_f(ref_mi)} | {entry['runs']} "
            f"| {_f(float(entry['test_error_mean']))} ± {_f(float(entry['test_error_std']))} "
            f"| {_f(float(entry['mutual_information_mean']))} ± {_f(float(entry['mutual_information_std']))} "
            f"| {_f(float(chosen['test_error']))} / {_f(float(chosen['mutual_information']))} "
            f"({Path(str(chosen['run'])).name}) |"
        )
    wall = [float(r["wall_s"]) for r in rows if not math.isnan(float(r["wall_s"]))]
    return "\n".join(lines) + f"\n\n{len(rows)} runs, {sum(wall) / 60:.0f} min of run time (fit + test), " \
        f"{sum(wall) / max(len(wall), 1):.0f} s per run.\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="output folder of the paper-mode sweep")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        parser.error(f"sweep: {args.sweep} is not a directory")
    text = table(rows_of(args.sweep))
    print(text)
    return text


if __name__ == "__main__":
    main()
