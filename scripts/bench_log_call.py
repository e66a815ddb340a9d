"""What one ``self.log`` call costs inside ``gmnn fit``, with and without :mod:`gmnn.cli.logging_speed`.

Each run is a fresh process that trains the paper's dense MNIST model (``configs/paper/mnist/dense.yaml``,
every default callback on, one intra-op thread) with ``LightningModule.log`` wrapped by a timer, and
prints the number of calls and the mean microseconds a call. Runs alternate between the fast path on
and off (``GMNN_LOG_FAST_PATH=1`` / ``0``), so both see the same machine::

    python scripts/bench_log_call.py --data ../shared/data --epochs 3 --repeat 2
    python scripts/bench_log_call.py --fake-data --epochs 1 --repeat 1      # seconds: random MNIST-shaped files
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

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "paper" / "mnist" / "dense.yaml"


def child(data: str, epochs: int, root: str, val_size: int) -> dict[str, float]:
    """Train once with a timer around ``LightningModule.log``; calls and mean microseconds a call."""
    from gmnn import pl
    from gmnn.cli.app import make_cli

    calls, seconds = 0, 0.0
    log = pl.LightningModule.log

    def timed(self, *args, **kwargs):
        nonlocal calls, seconds
        start = time.perf_counter()
        try:
            return log(self, *args, **kwargs)
        finally:
            calls, seconds = calls + 1, seconds + time.perf_counter() - start

    pl.LightningModule.log = timed
    make_cli(["fit", "--config", str(CONFIG), f"--data.init_args.root={data}", f"--data.init_args.val_size={val_size}",
              f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={root}"])
    return {"calls": calls, "us_a_call": 1e6 * seconds / max(calls, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--fake-data", action="store_true", help="random MNIST-format files of 2048 + 512 images instead")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each setting, alternating")
    parser.add_argument("--val-size", type=int, default=10000, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("DATA", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.epochs, args.child[1], args.val_size)))
        return
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="gmnn_log_call_") as tmp:
        data = Path(args.data).resolve()
        if args.fake_data:
            sys.path.insert(0, str(REPO / "scripts"))
            from bench_overhead import write_fake_mnist

            data, args.val_size = Path(tmp) / "data", 512
            write_fake_mnist(data)
        for round_ in range(args.repeat):
            for setting in runs:
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                       "GMNN_LOG_FAST_PATH": "1" if setting == "on" else "0"}
                cmd = [sys.executable, __file__, "--epochs", str(args.epochs), "--val-size", str(args.val_size),
                       "--child", str(data), f"{tmp}/{setting}{round_}"]
                done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
                runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.repeat} alternating runs of each setting, {args.epochs} epochs, one thread; load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print("| fast path | self.log calls a run | µs a call (median) | runs |")
    print("|---|---|---|---|")
    for setting, rows in runs.items():
        each = ", ".join(f"{r['us_a_call']:.0f}" for r in rows)
        print(f"| {setting} | {rows[0]['calls']:.0f} | {statistics.median(r['us_a_call'] for r in rows):.0f} | {each} |")


if __name__ == "__main__":
    main()
