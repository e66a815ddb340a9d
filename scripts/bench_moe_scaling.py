"""MoELayer's cost as E grows, beside Hugging Face's Mixtral block on the same weights and a matmul floor.

Forward + backward of ``out.square().mean()`` on ``tokens`` tokens (d_model 512, hidden 1024, top-2 by
default) at E = 8, 16, 32. Per E, four callables run interleaved round after round in one process, so
they see the same load:

* ``hf``: ``MixtralSparseMoeBlock`` (SwiGLU, its default eager loop over the hit experts);
* ``gmnn swiglu``: ``from_hf`` of that very block (same weights, same routing);
* ``gmnn gelu``: ``MoELayer(d, h, E, k)``, the default GELU MLP experts (2 matrices);
* ``floor swiglu`` / ``floor gelu``: the expert matmuls alone, a Python loop over E equal groups of
  ``tokens * k / E`` rows (same FLOPs as the routed layer under balanced routing), forward and backward.

Times are medians over ``--rounds`` rounds (after a warm-up round), per thread count
(``torch.set_num_threads``). ``--profile`` adds a torch.profiler breakdown of one gmnn call (1 thread):
the share of the self CPU time in routing, dispatch (gather / scatter / sort), activation, expert
matmuls and the rest of the backward. The load average (``os.getloadavg``) is printed with every table.

    python scripts/bench_moe_scaling.py --threads 1 2 --rounds 7 --profile
    python scripts/bench_moe_scaling.py --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if "--gmnn" in sys.argv:  # another source tree's gmnn (e.g. a git archive of an earlier commit), for before/after
    sys.path.insert(0, sys.argv[sys.argv.index("--gmnn") + 1])

from gmnn.nn import MoELayer  # noqa: E402
from gmnn.nn.moe.hf import from_hf  # noqa: E402


def hf_block(d: int, h: int, e: int, k: int) -> torch.nn.Module:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    block = MixtralSparseMoeBlock(MixtralConfig(hidden_size=d, intermediate_size=h, num_local_experts=e,
                                                num_experts_per_tok=k))
    for p in block.parameters():
        torch.nn.init.normal_(p, std=d ** -0.5)
    return block


class Floor(torch.nn.Module):
    """The expert matmuls alone: E groups of ``rows / E`` rows, GELU MLP (2 matrices) or SwiGLU (3), one
    parameter per expert matrix (no indexing of stacked weights, whose backward costs more than the matmuls)."""

    def __init__(self, d: int, h: int, e: int, rows: int, gated: bool) -> None:
        super().__init__()
        self.gated, self.sizes = gated, [rows // e + (1 if i < rows % e else 0) for i in range(e)]
        first = (2 if gated else 1) * h
        self.w1 = torch.nn.ParameterList(torch.randn(first, d) * d ** -0.5 for _ in range(e))
        self.w2 = torch.nn.ParameterList(torch.randn(d, h) * h ** -0.5 for _ in range(e))
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).repeat(self.rows // x.shape[:-1].numel(), 1)
        outs = []
        for i, part in enumerate(rows.split(self.sizes)):
            hidden = part @ self.w1[i].t()
            if self.gated:
                gate, up = hidden.chunk(2, dim=-1)
                hidden = torch.nn.functional.silu(gate) * up
            else:
                hidden = torch.nn.functional.gelu(hidden)
            outs.append(hidden @ self.w2[i].t())
        return torch.cat(outs)


def step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    out = layer(x)
    out = out[0] if isinstance(out, tuple) else out
    out.square().mean().backward()


def build(tokens: int, d: int, h: int, sizes: list[int], k: int) -> dict:
    torch.manual_seed(0)
    layers = {}
    for e in sizes:
        block = hf_block(d, h, e, k)
        layers[("hf", e)] = block
        layers[("gmnn swiglu", e)] = from_hf(block)
        layers[("gmnn gelu", e)] = MoELayer(d, h, e, k, balance_weight=0.0, z_weight=0.0)
        layers[("floor swiglu", e)] = Floor(d, h, e, tokens * k, gated=True)
        layers[("floor gelu", e)] = Floor(d, h, e, tokens * k, gated=False)
    return layers


def time_all(layers: dict, x: torch.Tensor, rounds: int) -> dict:
    """Median seconds per call of every layer, interleaved round after round (one warm-up round)."""
    times: dict = {key: [] for key in layers}
    for r in range(rounds + 1):
        for key, layer in layers.items():
            layer.zero_grad(set_to_none=True)
            start = time.perf_counter()
            step(layer, x)
            if r:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(v) for key, v in times.items()}


CATEGORIES = {
    "expert matmuls": ("aten::mm", "aten::bmm", "aten::_grouped_mm", "aten::addmm", "aten::linear", "aten::matmul"),
    "activation": ("gelu", "silu", "aten::mul", "aten::chunk", "aten::split"),
    "routing": ("softmax", "topk", "aten::sort", "aten::gather", "log_softmax", "aten::where", "aten::div",
                "aten::sum", "aten::lt", "aten::masked_fill", "aten::one_hot", "aten::greater", "aten::nonzero"),
    "dispatch": ("index_select", "index_add", "aten::argsort", "aten::scatter", "cumsum", "aten::index", "aten::cat",
                 "aten::repeat", "aten::floor_divide", "aten::zeros", "aten::new_zeros", "aten::bincount",
                 "aten::embedding", "index_put"),
}


def profile(layer: torch.nn.Module, x: torch.Tensor, calls: int = 3) -> dict[str, float]:
    """Share of the self CPU time of ``calls`` forward + backward calls by category (forward ops by name;
    the backward's autograd nodes by the op they differentiate, their copies and reductions as "backward extras")."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    step(layer, x)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            layer.zero_grad(set_to_none=True)
            step(layer, x)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key
        if not name.startswith("aten::") and "Backward" not in name:
            continue
        category = "backward extras"
        for cat, keys in CATEGORIES.items():
            if any(key in name for key in keys):
                category = cat
                break
        if "Backward" in name:  # autograd node overhead beyond its aten calls
            category = "backward extras"
        totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {cat: value / whole for cat, value in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="profile gmnn and HF at E = the largest size, 1 thread")
    parser.add_argument("--json", default=None)
    parser.add_argument("--gmnn", default=None, help="import gmnn from this source tree instead")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    tokens, d, h, sizes = (128, 64, 128, [4, 8]) if args.quick else (args.tokens, 512, 1024, [8, 16, 32])
    rounds = 2 if args.quick else args.rounds
    layers = build(tokens, d, h, sizes, args.k)
    x = torch.randn(1, tokens, d)
    results: dict = {"tokens": tokens, "d_model": d, "hidden": h, "k": args.k, "rounds": rounds, "tables": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        load_before = os.getloadavg()
        med = time_all(layers, x, rounds)
        load_after = os.getloadavg()
        print(f"\n{threads} thread(s), {tokens} tokens, d {d}, h {h}, top-{args.k}, medians of {rounds}; "
              f"load {load_before[0]:.2f} before, {load_after[0]:.2f} after (1-min average)\n")
        print("| E | HF ms | gmnn SwiGLU ms | gmnn / HF | gmnn GELU ms | floor SwiGLU ms | floor GELU ms |\n"
              "|---|---|---|---|---|---|---|")
        for e in sizes:
            print(f"| {e} | {1e3 * med[('hf', e)]:.1f} | {1e3 * med[('gmnn swiglu', e)]:.1f} | "
                  f"{med[('gmnn swiglu', e)] / med[('hf', e)]:.2f} | {1e3 * med[('gmnn gelu', e)]:.1f} | "
                  f"{1e3 * med[('floor swiglu', e)]:.1f} | {1e3 * med[('floor gelu', e)]:.1f} |")
        big = sizes[-1]
        ratios = {name: med[(name, big)] / med[(name, sizes[0])]
                  for name in ("hf", "gmnn swiglu", "gmnn gelu", "floor swiglu", "floor gelu")}
        print(f"\nE={big} / E={sizes[0]}: " + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items()))
        results["tables"].append({"threads": threads, "load": [load_before, load_after],
                                  "ms": {f"{n} E={e}": 1e3 * v for (n, e), v in med.items()},
                                  "scaling": ratios})
    if args.profile:
        torch.set_num_threads(1)
        shares = {}
        for name in ("gmnn swiglu", "gmnn gelu", "hf"):
            shares[name] = profile(layers[(name, sizes[-1])], x)
        cats = ["routing", "dispatch", "activation", "expert matmuls", "backward extras"]
        print(f"\nprofile, 1 thread, E={sizes[-1]}, share of self CPU time (load {os.getloadavg()[0]:.2f})\n")
        print("| layer | " + " | ".join(cats) + " |\n|---|" + "---|" * len(cats))
        for name, share in shares.items():
            print(f"| {name} | " + " | ".join(f"{share.get(c, 0.0):.0%}" for c in cats) + " |")
        results["profile"] = shares
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
