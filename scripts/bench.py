"""Speed benchmark: batched/sparse gmnn vs naive per-expert loops, and MoELayer scaling.

Timings are the fastest of the repeated steps (``median_*`` in the JSON):
on a machine shared with other jobs, interference only ever adds time.

(a) training throughput (samples/s, full Lightning training step with metrics)
    of the paper's MNIST model (conv experts, conv gate, 5 experts, batch 512,
    served in whole batches as gmnn's image DataModules do)
    for each variant against ``benchmarks/naive.py`` (a Python loop over
    experts built from standard layers) and against gmnn with
    ``batched_experts=False`` (gmnn's kernels, experts one after the other),
    measured in one run, alternating implementations so all see the same load;
(b) MoELayer forward+backward time and memory vs the number of experts E at
    fixed tokens and k: dense mixture (all E experts) vs top-k (exact grouping,
    and with a capacity factor). Memory: bytes saved for backward (any device)
    and, on CUDA, the peak allocated memory.

    python scripts/bench.py                 # full run (a few minutes on 2 CPU cores)
    python scripts/bench.py --quick         # CI smoke test (seconds)
    python scripts/bench.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gmnn._deferred import install as defer_unused_imports  # noqa: E402

# run as a script, as the gmnn command: torchmetrics' unused metric domains and Lightning's compiler imports
# load when used (gmnn._deferred); imported as a module, it leaves the importer's imports alone
if __name__ == "__main__":
    defer_unused_imports()

import pytorch_lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset  # noqa: E402

from benchmarks.naive import NAIVE  # noqa: E402
from gmnn.models import AttentionGateMoE, DenseMoE, MoEModule, ProductOfExperts, TopKMoE  # noqa: E402
from gmnn.nn import MoELayer  # noqa: E402

PAPER = dict(input_shape=[1, 28, 28], num_classes=10, num_experts=5, expert="conv", expert_hidden=[5, 32],
             gate="conv", gate_hidden=[128, 32], lr=1e-3, weight_decay=1e-3)
VARIANTS: dict[str, tuple[type[MoEModule], dict]] = {
    "DenseMoE": (DenseMoE, {}),
    "TopKMoE k=1": (TopKMoE, {"k": 1}),
    "TopKMoE k=2": (TopKMoE, {"k": 2}),
    "TopKMoE k=1 cf1.25": (TopKMoE, {"k": 1, "capacity_factor": 1.25}),
    "ProductOfExperts": (ProductOfExperts, {}),
    "AttentionGateMoE": (AttentionGateMoE, {}),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Wall time of each training step (forward, loss, metrics, logging, backward, optimizer)."""

    def __init__(self, device: str) -> None:
        self.device, self.times, self._start = device, [], 0.0

    def on_train_batch_start(self, *args: object) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: object) -> None:
        sync(self.device)
        self.times.append(time.perf_counter() - self._start)


def train_step_times(model: MoEModule, batch: int, steps: int, device: str) -> list[float]:
    x = torch.randn(batch * steps, *PAPER["input_shape"])
    y = torch.randint(0, PAPER["num_classes"], (batch * steps,))
    timer = StepTimer(device)
    trainer = L.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    # whole batches indexed at once, as gmnn's image DataModules serve them (no per-sample collate)
    batches = BatchSampler(SequentialSampler(range(len(x))), batch_size=batch, drop_last=False)
    trainer.fit(model, DataLoader(TensorDataset(x, y), sampler=batches, batch_size=None))
    return timer.times[1:]  # the first step warms up


def bench_training(batch: int, steps: int, rounds: int, device: str) -> list[dict]:
    """Three implementations per variant, alternated round by round so that all see the same load:
    ``naive`` (benchmarks/naive.py), ``looped`` (gmnn with ``batched_experts=False``: gmnn's kernels,
    one expert after the other) and ``gmnn`` (batched experts)."""
    rows = []
    for name, (cls, extra) in VARIANTS.items():
        impls = {"gmnn": (cls, {}), "looped": (cls, {"batched_experts": False}), "naive": (NAIVE[cls], {})}
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        for _ in range(rounds):
            for impl, (model_cls, options) in impls.items():
                L.seed_everything(0, verbose=False)
                times[impl] += train_step_times(model_cls(**PAPER, **extra, **options), batch, steps, device)
        best = {impl: batch / min(times[impl]) for impl in impls}
        median = {impl: batch / statistics.median(times[impl]) for impl in impls}
        rows.append({"model": name, "gmnn_samples_per_s": best["gmnn"], "naive_samples_per_s": best["naive"],
                     "looped_samples_per_s": best["looped"], "speedup": best["gmnn"] / best["naive"],
                     "looped_speedup": best["looped"] / best["naive"],
                     "median_gmnn_samples_per_s": median["gmnn"], "median_naive_samples_per_s": median["naive"],
                     "median_speedup": median["gmnn"] / median["naive"]})
        print(f"| {name} | {best['naive']:,.0f} | {best['looped']:,.0f} | {best['gmnn']:,.0f} | "
              f"{best['looped'] / best['naive']:.2f}x | {best['gmnn'] / best['naive']:.2f}x |", flush=True)
    return rows


def saved_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Run ``fn`` and count the bytes autograd saves for backward (activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if not isinstance(t, torch.nn.Parameter):
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


def layer_step(layer: MoELayer, x: torch.Tensor) -> torch.Tensor:
    out, aux = layer(x)
    return out.square().mean() + aux


def time_layer(layer: MoELayer, x: torch.Tensor, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    layer_step(layer, x).backward()
    sync(device)
    return time.perf_counter() - start


def layer_memory(layer: MoELayer, x: torch.Tensor, device: str) -> tuple[float, float | None]:
    """MiB saved for backward and, on CUDA, the peak MiB allocated during forward+backward."""
    layer.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    loss, saved = saved_bytes(lambda: layer_step(layer, x))
    loss.backward()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.startswith("cuda") else None
    return saved / 2**20, peak


def bench_layer(tokens: int, d_model: int, hidden: int, experts: list[int], repeats: int, device: str) -> list[dict]:
    """Every (E, mode) timed once per round, round after round, so that all see the same load."""
    x = torch.randn(tokens, d_model, device=device)
    layers = {}
    for e in experts:
        modes = [("dense", e, 0.0)] + [(f"top-{k}", k, 0.0) for k in (1, 2)] + [(f"top-{k} cf1.25", k, 1.25) for k in (1, 2)]
        for mode, k, cf in modes:
            torch.manual_seed(0)
            layers[(e, mode)] = MoELayer(d_model, hidden, e, k=k, capacity_factor=cf).to(device)
    times: dict[tuple[int, str], list[float]] = {key: [] for key in layers}
    for round_ in range(repeats + 1):  # round 0 warms up
        for key, layer in layers.items():
            elapsed = time_layer(layer, x, device)
            if round_:
                times[key].append(elapsed)
    rows = []
    for (e, mode), layer in layers.items():
        saved, peak = layer_memory(layer, x, device)
        row = {"E": e, "mode": mode, "ms": 1e3 * min(times[(e, mode)]), "median_ms": 1e3 * statistics.median(times[(e, mode)]),
               "saved_mib": saved, "peak_mib": peak}
        rows.append(row)
        peak_text = "" if peak is None else f" | {peak:.1f}"
        print(f"| {e} | {mode} | {row['ms']:.1f} | {saved:.1f}{peak_text} |", flush=True)
    return rows


def memory_vs_tokens(tokens: list[int], d_model: int, hidden: int, experts: int, device: str) -> list[dict]:
    """MiB saved for backward as the token count grows, dense vs top-k, at fixed E."""
    rows = []
    for mode, k in [("dense", experts), ("top-1", 1), ("top-2", 2)]:
        torch.manual_seed(0)
        layer = MoELayer(d_model, hidden, experts, k=k).to(device)
        for t in tokens:
            saved, peak = layer_memory(layer, torch.randn(t, d_model, device=device), device)
            rows.append({"E": experts, "mode": mode, "tokens": t, "saved_mib": saved, "peak_mib": peak})
        print(f"| {mode} | " + " | ".join(f"{r['saved_mib']:.1f}" for r in rows[-len(tokens):]) + " |", flush=True)
    return rows


def summary(layer_rows: list[dict]) -> dict:
    ms = {(r["E"], r["mode"]): r["ms"] for r in layer_rows}
    sizes = sorted({r["E"] for r in layer_rows})
    out = {}
    if 16 in sizes:
        out["top2_over_dense_at_E16"] = ms[(16, "top-2")] / ms[(16, "dense")]
        out["top2cf_over_dense_at_E16"] = ms[(16, "top-2 cf1.25")] / ms[(16, "dense")]
    if 8 in sizes and 32 in sizes:
        for mode in ("top-1", "top-2", "top-1 cf1.25", "top-2 cf1.25", "dense"):
            out[f"{mode}: E32_over_E8"] = ms[(32, mode)] / ms[(8, mode)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    parser.add_argument("--skip", choices=["training", "layer"], help="skip one part")
    args = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.quick:
        train = dict(batch=16, steps=2, rounds=1)
        layer = dict(tokens=32, d_model=4, hidden=8, experts=[4, 8], repeats=1)
    else:
        train = dict(batch=512, steps=8, rounds=5)
        layer = dict(tokens=4096, d_model=64, hidden=128, experts=[4, 8, 16, 32], repeats=5)
    results: dict = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "training": train, "layer": layer, "statistic": "fastest step (median_* also given)"}
    if args.skip != "training":
        print(f"\n(a) training throughput, paper's MNIST model, batch {train['batch']} (samples/s)\n")
        print("| model | naive loop | gmnn, experts looped | gmnn | looped / naive | gmnn / naive |\n"
              "|---|---|---|---|---|---|")
        results["training_rows"] = bench_training(**train, device=args.device)
    if args.skip != "layer":
        print(f"\n(b) MoELayer forward+backward, {layer['tokens']} tokens, d_model {layer['d_model']}, "
              f"hidden {layer['hidden']}\n")
        cuda = " | peak MiB" if args.device.startswith("cuda") else ""
        print(f"| E | mode | ms | saved for backward MiB{cuda} |\n|---|---|---|---|" + ("---|" if cuda else ""))
        results["layer_rows"] = bench_layer(**layer, device=args.device)
        results["ratios"] = summary(results["layer_rows"])
        sizes = [layer["tokens"] // 4, layer["tokens"] // 2, layer["tokens"]]
        print(f"\n(c) MiB saved for backward vs tokens, E = {layer['experts'][-1]}\n")
        print("| mode | " + " | ".join(f"{t} tokens" for t in sizes) + " |\n|---|" + "---|" * len(sizes))
        results["memory_rows"] = memory_vs_tokens(sizes, layer["d_model"], layer["hidden"], layer["experts"][-1], args.device)
        print("\n" + "\n".join(f"{k}: {v:.3f}" for k, v in results["ratios"].items()))
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
