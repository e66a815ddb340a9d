"""Start-up of the ``gmnn`` command against a git ref: ``gmnn fit --help`` and the import the command needs.

Runs, alternating between the two trees round by round, ``python -m gmnn.cli fit --help``,
``python -c "import <the command's module>"`` and that import under ``-X importtime``, each a fresh
process started in its tree with ``PYTHONPATH`` set to it (``gmnn.cli.app`` where the tree has it, else
``gmnn.cli``, the module before the command became a package). Prints each side's medians of wall time,
user + system CPU time of the process and the summed ``-X importtime`` self times, and the ratio.

CPU time and import self times move less than wall time when other jobs share the cores; the machine's
load average is printed before and after::

    python scripts/bench_startup.py --ref 39975ec --repeat 5
    python scripts/bench_startup.py --ref HEAD~1 --new HEAD     # two refs, neither the working tree
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: gitref, also when this file is loaded by path
from gitref import export  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def command_module(tree: Path) -> str:
    """The module ``gmnn fit`` imports: ``gmnn.cli.app``, or ``gmnn.cli`` in trees from before it."""
    return "gmnn.cli.app" if (tree / "gmnn" / "cli" / "app.py").is_file() else "gmnn.cli"


def run(cmd: list[str], tree: Path) -> tuple[float, float, str]:
    """Wall seconds, user + system CPU seconds of the process, and its stderr; raises if it fails."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read() if process.stderr else ""
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} in {tree} failed (exit {process.returncode}):\n{stderr[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, stderr


def import_self_seconds(stderr: str) -> float:
    """The sum of the self times of ``-X importtime``'s lines."""
    total = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            total += int(line.split(":", 1)[1].split("|")[0])
    return total / 1e6


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(trees: dict[str, Path], repeat: int) -> dict[str, dict[str, list[float]]]:
    rows: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    python = sys.executable
    for _ in range(repeat):
        for name, tree in trees.items():
            module = command_module(tree)
            row = rows[name]
            wall, cpu, _ = run([python, "-m", "gmnn.cli", "fit", "--help"], tree)
            row.setdefault("help wall", []).append(wall)
            row.setdefault("help cpu", []).append(cpu)
            wall, cpu, _ = run([python, "-c", f"import {module}"], tree)
            row.setdefault("import wall", []).append(wall)
            row.setdefault("import cpu", []).append(cpu)
            _, _, stderr = run([python, "-X", "importtime", "-c", f"import {module}"], tree)
            row.setdefault("import self", []).append(import_self_seconds(stderr))
    return rows


def table(rows: dict[str, dict[str, list[float]]], old: str, new: str) -> str:
    what = {
        "help wall": "fit --help, wall s",
        "help cpu": "fit --help, user+sys s",
        "import wall": "import, wall s",
        "import cpu": "import, user+sys s",
        "import self": "import, -X importtime self s",
    }
    lines = [f"| measure | {old} | {new} | {new} / {old} |", "|---|---|---|---|"]
    for key, label in what.items():
        a, b = statistics.median(rows[old][key]), statistics.median(rows[new][key])
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {b / a:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="39975ec", help="git ref measured against (default: %(default)s)")
    parser.add_argument("--new", help="git ref to measure instead of the working tree")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; each runs every command once on each side")
    parser.add_argument("--json", help="also write every time to this file")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    before = load()
    with tempfile.TemporaryDirectory(prefix="gmnn_startup_") as tmp:
        old = export(args.ref, Path(tmp) / "old")
        new = export(args.new, Path(tmp) / "new") if args.new else REPO
        names = {args.ref: old, args.new or "this tree": new}
        modules = ", ".join(f"{name}: {command_module(tree)}" for name, tree in names.items())
        rows = measure(names, args.repeat)
    after = load()
    old_name, new_name = names
    print(f"{args.repeat} interleaved rounds, {os.cpu_count()} CPUs; {before} before, {after} after; medians")
    print(f"import: {modules}")
    print(table(rows, old_name, new_name))
    if args.json:
        Path(args.json).write_text(json.dumps({"load_before": before, "load_after": after, "times": rows}, indent=1))


if __name__ == "__main__":
    main()
