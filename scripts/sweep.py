"""Run configs x seeds x grids of overrides as separate runs in one folder, resumably.

Example (the MNIST dense row over three seeds and two learning rates)::

    python scripts/sweep.py --protocol configs/mnist/protocol.yaml --configs configs/methods/dense.yaml \\
        --seeds 0 1 2 --grid model.init_args.lr=0.001,0.003 --set data.init_args.root=../shared/data --out sweeps/mnist

With ``--protocol`` every ``--configs`` file is a method fragment composed after each protocol
(``--config PROTOCOL --config METHOD``), and the configuration is named ``<protocol's folder>-<method>``
(``mnist-dense``); without it every config is a whole config, named ``<its folder>-<its name>``.

Every run trains with ``fit`` and is then tested on the final weights; it
lives in ``OUT/<configuration>/seed<s>/`` (TensorBoard events, config, checkpoints) and is
finished once its ``result.json`` exists. A second invocation
skips finished runs, so an interrupted sweep resumes where it stopped. At the
end the results of every run of the sweep are written to ``OUT/results.csv``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import this checkout's gmnn
    sys.path.insert(0, str(ROOT))

RESULT_FILE = "result.json"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@dataclass
class Run:
    """One training run: a config, a seed and the overrides of one grid point."""

    config: Path
    seed: int
    overrides: dict[str, str] = field(default_factory=dict)
    protocol: Path | None = None  # composed before ``config`` (a method fragment) when given

    @property
    def label(self) -> str:
        """The configuration, a stable folder name: ``<dataset>-<config>__<key>=<value>...`` (the dataset is the
        protocol's folder, else the config's)."""
        parts = [f"{(self.protocol or self.config).parent.name}-{self.config.stem}"]
        parts += [f"{key.replace('init_args.', '')}={value}" for key, value in self.overrides.items()]
        return re.sub(r"[^A-Za-z0-9._=+-]", "_", "__".join(parts))

    @property
    def name(self) -> str:
        """The run's folder below the sweep's: ``<label>/seed<s>`` (the results table groups by label)."""
        return f"{self.label}/seed{self.seed}"

    def cli_args(self, out: Path, fixed: dict[str, str]) -> list[str]:
        """Arguments of ``gmnn fit`` for this run, logging into ``out/<label>/seed<s>``."""
        overrides = {**fixed, **self.overrides}
        protocol = ["--config", str(self.protocol)] if self.protocol else []
        return [
            *protocol, "--config", str(self.config), f"--seed_everything={self.seed}",
            f"--trainer.logger.init_args.save_dir={out}", f"--trainer.logger.init_args.name={self.label}",
            f"--trainer.logger.init_args.version=seed{self.seed}", *QUIET,
            *(f"--{key}={value}" for key, value in overrides.items()),
        ]


def parse_assignments(items: list[str], flag: str) -> dict[str, str]:
    """``["a.b=1", ...]`` to ``{"a.b": "1"}``; ``ValueError`` naming ``flag`` when malformed."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r}")
        result[key.removeprefix("--")] = value
    return result


def plan(configs: list[Path], seeds: list[int], grid: dict[str, str], protocols: list[Path] | None = None) -> list[Run]:
    """Every combination of protocol (if any), config, grid point and seed, in a stable order."""
    keys = list(grid)
    values = [grid[key].split(",") for key in keys]
    return [
        Run(config, seed, dict(zip(keys, point)), protocol)
        for protocol in (protocols or [None])
        for config in configs
        for point in itertools.product(*values)
        for seed in seeds
    ]


def train_and_test(run: Run, out: Path, fixed: dict[str, str]) -> dict[str, float]:
    """Fit one run, test its final weights, and return its ``test/*`` metrics."""
    from gmnn.cli import make_cli

    cli = make_cli(run.cli_args(out, fixed), run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    return {key: float(value) for key, value in metrics.items() if key.startswith("test/")}


def _print(message: str) -> None:
    print(message, flush=True)  # progress shows up at once even when stdout is a file


def write_results_md(path: Path, runs: list[Run], out: Path, reference: str, command: str) -> None:
    """``RESULTS.md``: the sweep's mean ± std per configuration next to a published table, the command and wall time."""
    from gmnn.cli.report import REFERENCES, comparison_markdown, find_runs, read_scalars, run_row, summarise

    records = [json.loads((out / r.name / RESULT_FILE).read_text()) for r in runs if (out / r.name / RESULT_FILE).exists()]
    done = sorted(str(out / r.name) for r in runs if (out / r.name / RESULT_FILE).exists())
    rows = [run_row(d, read_scalars(d)) for d in find_runs(done)]  # only this sweep's runs, not others in OUT
    seeds = sorted({int(r["seed"]) for r in records})
    wall = sum(float(r["wall_s"]) for r in records)
    path.write_text(
        f"# Results ({reference})\n\nGenerated by `scripts/sweep.py`; {len(records)} runs, seeds {seeds}. Each run is "
        "trained with `fit` and tested on its final weights; columns are mean ± sample std over seeds, next to the "
        f"paper's published figures.\n\nCommand:\n\n```bash\n{command}\n```\n\nWall time: {wall / 60:.0f} min of "
        f"run time in all ({wall / max(len(records), 1):.0f} s per run, fit + test, 1 thread per run).\n\n"
        + comparison_markdown(summarise(rows), REFERENCES[reference])
    )


def sweep(runs: list[Run], out: Path, fixed: dict[str, str], log: Callable[[str], None] = _print) -> dict[str, int]:
    """Run every unfinished run of ``runs``; return counts of ``ran``, ``skipped`` and ``failed``."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    durations: list[float] = []
    for i, run in enumerate(runs, 1):
        result_path = out / run.name / RESULT_FILE
        prefix = f"[{i}/{len(runs)}] {run.name}"
        if result_path.exists():
            counts["skipped"] += 1
            log(f"{prefix}: finished before, skipped")
            continue
        if result_path.parent.exists():  # an interrupted run starts again from scratch
            shutil.rmtree(result_path.parent)
        start = time.time()
        try:
            metrics = train_and_test(run, out, fixed)
        except Exception as error:  # keep going: one broken run must not stop a night-long sweep
            counts["failed"] += 1
            log(f"{prefix}: FAILED: {type(error).__name__}: {error}")
            continue
        durations.append(time.time() - start)
        record = {"run": run.name, "config": str(run.config), **({"protocol": str(run.protocol)} if run.protocol else {}),
                  "seed": run.seed, **run.overrides,
                  "wall_s": round(durations[-1], 1), **metrics}
        result_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(result_path)  # atomic: a run is finished only once its result is complete
        counts["ran"] += 1
        left = sum(1 for r in runs[i:] if not (out / r.name / RESULT_FILE).exists())
        eta = left * sum(durations) / len(durations)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in ("test/acc", "test/loss"))
        log(f"{prefix}: done in {durations[-1]:.0f} s ({shown}); {left} left, about {eta / 60:.0f} min")
    finished = sorted(str(out / r.name) for r in runs if (out / r.name / RESULT_FILE).exists())
    if finished:  # the results table of gmnn.cli.report for this sweep's runs: per run and mean ± std per configuration
        from gmnn.cli.report import report

        report(finished, out=out)
    log(f"ran {counts['ran']}, skipped {counts['skipped']}, failed {counts['failed']}; table: {out / 'results.md'}")
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", type=Path, required=True,
                        help="gmnn YAML configs (with --protocol: method fragments, e.g. configs/methods/*.yaml)")
    parser.add_argument("--protocol", nargs="+", type=Path, default=[], dest="protocols",
                        help="protocols to compose every --configs file after, e.g. configs/mnist/protocol.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="values of seed_everything")
    parser.add_argument("--grid", nargs="*", default=[], metavar="KEY=V1,V2",
                        help="overrides to sweep, e.g. model.init_args.lr=0.001,0.003 (all combinations)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="fixed",
                        help="overrides applied to every run, e.g. trainer.max_epochs=5")
    parser.add_argument("--out", type=Path, required=True, help="output folder of the sweep")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and whether they are finished")
    parser.add_argument("--reference", choices=["mnist"], help="published table to compare with in --results-md")
    parser.add_argument("--results-md", type=Path, help="write this Markdown file (e.g. RESULTS.md) next to --reference")
    args = parser.parse_args(argv)
    try:
        grid, fixed = parse_assignments(args.grid, "--grid"), parse_assignments(args.fixed, "--set")
    except ValueError as error:
        parser.error(str(error))
    for flag, paths in (("--configs", args.configs), ("--protocol", args.protocols)):
        for path in paths:
            if not path.is_file():
                parser.error(f"{flag}: no such file {path}")
    labels = [run.label for run in plan(args.configs, [0], {}, args.protocols)]
    if len(set(labels)) < len(labels):
        parser.error(f"--configs/--protocol: two runs would share a folder name ({sorted(labels)}); "
                     "give configs of different names or folders")
    runs = plan(args.configs, args.seeds, grid, args.protocols)
    if args.dry_run:
        for run in runs:
            state = "finished" if (args.out / run.name / RESULT_FILE).exists() else "to run"
            print(f"{run.name}: {state}")
        return {"ran": 0, "skipped": 0, "failed": 0}
    if args.results_md and not args.reference:
        parser.error("--results-md needs --reference")
    counts = sweep(runs, args.out, fixed)
    if args.results_md:
        command = "python scripts/sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_results_md(args.results_md, runs, args.out, args.reference, command)
    if counts["failed"]:
        sys.exit(1)
    return counts


if __name__ == "__main__":
    main()
