"""Cost of MoELayer as the work grows, beside the matmul floor; and of the dense image mixture against E.

Token layer: forward + backward of ``out.square().mean()`` through ``MoELayer(d, 2 d, E, k)`` (softmax top-k,
GELU MLP experts, dropless; ``k == E`` runs the dense path) against the floor, the expert matmuls alone
(a loop over E equal groups of ``tokens * k / E`` rows, one parameter per expert matrix, same FLOPs as the
layer under balanced routing). One axis moves at a time from the base point E 8, k 2, 2048 tokens,
d_model 256: E 4-64, k 1-8, tokens 512-16k, d_model 64-1024. Each point's two callables run interleaved
(median of ``--rounds`` after a warm-up). Peak memory: each callable alone in a fresh process, the peak growth of
its resident set over one forward + backward after a warm-up step (gradients freed before it; glibc maps every buffer over 64 KiB on its own, so that
freed memory leaves the resident set), in MiB.

Dense image mixture: ``gmnn.nn.mixture.Experts`` of the paper's conv experts (MNIST-shaped inputs, batch
512), forward + backward, batched (``batched=True``, stacked parameters) against looped, E = 2-32.

    python scripts/bench_moe_cost.py --json cost.json        # about 10 minutes on one thread
    python scripts/bench_moe_cost.py --quick                 # CI-sized: tiny grid, memory of the first rows only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_moe_scaling import Floor, step  # noqa: E402  (this folder is on the path of a script)
from bench_moe_scaling import time_all  # noqa: E402
from gmnn.nn import MoELayer  # noqa: E402

BASE = dict(E=8, k=2, tokens=2048, d=256)
AXES = {"E": [4, 8, 16, 32, 64], "k": [1, 2, 4, 8], "tokens": [512, 2048, 8192, 16384], "d": [64, 256, 1024]}
QUICK_BASE = dict(E=4, k=2, tokens=128, d=32)
QUICK_AXES = {"E": [2, 4], "k": [1, 2], "tokens": [64, 128], "d": [16, 32]}
MIXTURE_E = [2, 4, 8, 16, 32]
QUICK_MIXTURE_E = [2, 4]


def token_callable(kind: str, point: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    e, k, tokens, d = point["E"], point["k"], point["tokens"], point["d"]
    x = torch.randn(tokens, d)
    if kind == "gmnn":
        return MoELayer(d, 2 * d, e, k, balance_weight=0.0, z_weight=0.0), x
    return Floor(d, 2 * d, e, tokens * k, gated=False), x


def mixture_callable(kind: str, e: int, quick: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    from gmnn.nn.mixture.experts import Experts
    from gmnn.nn.mixture.networks import ConvNet

    torch.manual_seed(0)
    module = Experts(lambda: ConvNet((1, 28, 28), 10), e, batched=kind == "batched")
    return module, torch.randn(64 if quick else 512, 1, 28, 28)


def timed(pairs: dict, rounds: int) -> dict:
    """Median seconds of each ``name: (module, input)`` (one input for all), interleaved round after round."""
    x = next(iter(pairs.values()))[1]
    return time_all({name: module for name, (module, _) in pairs.items()}, x, rounds)


def peak_child(spec: str) -> None:
    """In a fresh process: print the peak growth (MiB) of the resident set over one forward + backward of one
    callable, sampled from ``/proc/self/statm`` every 0.2 ms."""
    from peak_memory import peak_rss_during, rss_mib

    what = json.loads(spec)
    torch.set_num_threads(1)
    if what["table"] == "token":
        module, x = token_callable(what["kind"], what["point"])
    else:
        module, x = mixture_callable(what["kind"], what["E"], what["quick"])
    step(module, x)  # warm-up: gradients allocated
    module.zero_grad(set_to_none=True)
    before = rss_mib()
    print(peak_rss_during(lambda: step(module, x)) - before)


def peak(what: dict) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # large buffers mapped and unmapped: RSS follows live memory
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--peak-child", json.dumps(what)],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def points(base: dict, axes: dict) -> list[tuple[str, dict]]:
    """The base point, then each axis's other values (the base point once)."""
    out = [("base", dict(base))]
    for axis, values in axes.items():
        out += [(axis, {**base, axis: v}) for v in values if v != base[axis]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI-sized grid (seconds)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", default=None)
    parser.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        peak_child(args.peak_child)
        return
    torch.set_num_threads(args.threads)
    base, axes = (QUICK_BASE, QUICK_AXES) if args.quick else (BASE, AXES)
    rounds = 1 if args.quick else args.rounds
    memory = not args.no_memory
    results: dict = {"threads": args.threads, "rounds": rounds, "load_start": os.getloadavg(), "token": [], "mixture": []}
    print(f"MoELayer (GELU MLP experts, hidden 2 d_model) against the matmul floor; {args.threads} thread(s), "
          f"medians of {rounds}; load {os.getloadavg()[0]:.2f} at the start\n")
    print("| axis | E | k | tokens | d_model | gmnn ms | floor ms | gmnn / floor | gmnn peak MiB | floor peak MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for index, (axis, point) in enumerate(points(base, axes)):
        med = timed({kind: token_callable(kind, point) for kind in ("gmnn", "floor")}, rounds)
        measure = memory and (index == 0 or not args.quick)  # --quick: the first row's memory only
        mem = {kind: peak({"table": "token", "kind": kind, "point": point}) if measure else float("nan")
               for kind in ("gmnn", "floor")}
        row = {"axis": axis, **point, "ms": {n: 1e3 * v for n, v in med.items()}, "peak_mib": mem}
        results["token"].append(row)
        print(f"| {axis} | {point['E']} | {point['k']} | {point['tokens']} | {point['d']} | {1e3 * med['gmnn']:.1f} | "
              f"{1e3 * med['floor']:.1f} | {med['gmnn'] / med['floor']:.2f} | {mem['gmnn']:.0f} | {mem['floor']:.0f} |",
              flush=True)
    print(f"\nDense image mixture (paper's conv experts, MNIST-shaped batch of {64 if args.quick else 512}), forward + "
          f"backward; load {os.getloadavg()[0]:.2f}\n")
    print("| E | batched ms | looped ms | batched / looped | batched peak MiB | looped peak MiB |\n|---|---|---|---|---|---|")
    for index, e in enumerate(QUICK_MIXTURE_E if args.quick else MIXTURE_E):
        med = timed({kind: mixture_callable(kind, e, args.quick) for kind in ("batched", "looped")}, rounds)
        measure = memory and (index == 0 or not args.quick)
        mem = {kind: peak({"table": "mixture", "kind": kind, "E": e, "quick": args.quick}) if measure else float("nan")
               for kind in ("batched", "looped")}
        results["mixture"].append({"E": e, "ms": {n: 1e3 * v for n, v in med.items()}, "peak_mib": mem})
        print(f"| {e} | {1e3 * med['batched']:.1f} | {1e3 * med['looped']:.1f} | {med['batched'] / med['looped']:.2f} | "
              f"{mem['batched']:.0f} | {mem['looped']:.0f} |", flush=True)
    results["load_end"] = os.getloadavg()
    print(f"\nload {results['load_end'][0]:.2f} at the end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
