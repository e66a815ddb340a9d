"""Training speed of MoETransformerLM against Hugging Face's MixtralForCausalLM at the same model.

gmnn's LM with ``expert_type="swiglu"``, ``norm="rmsnorm"``, ``position="rope"``, ``attention_bias=False``
is Mixtral's decoder layer for layer (full multi-head attention, embedding tied to the output projection);
the only parameters that differ are the router biases (E per layer). Both models train on the same random
byte batches with Adam (lr 3e-3) in a bare loop (forward, next-byte cross-entropy, backward, step; gmnn adds
its layers' default auxiliary losses, HF's model its router logits are not requested so it adds none).
Steps alternate between the two models in one process, one step each per round, so they see the same
load; the table gives the median step time and tokens/s. Peak memory: ``--memory`` runs each model alone
in a fresh process and samples its resident set (``/proc/self/statm``) during the training steps, against
the resident set after building and one warm-up step (the difference: activations and gradients at their
peak); ``ru_maxrss`` of the whole process beside it (imports included).

``--kernels`` profiles three steps of each model (``torch.profiler``, one thread) and splits its CPU time into
the kernels both models call on the same shapes (matrix products and the attention kernel, forward and
backward) and the rest. Since the shared kernels take the same time on both sides, HF's step time over its
shared-kernel time bounds any speed-up that does not change those kernels: gmnn's step cannot fall below
the shared kernels' time.

    python scripts/bench_lm_vs_mixtral.py --threads 1 2 --steps 15 --memory --kernels
    python scripts/bench_lm_vs_mixtral.py --sizes small --threads 1 --steps 10 --compile   # both compiled
    python scripts/bench_lm_vs_mixtral.py --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmnn.models import MoETransformerLM  # noqa: E402
from peak_memory import peak_rss_during, rss_mib  # noqa: E402

SIZES = {"quick": dict(d_model=32, layers=1, heads=2, experts=4, hidden=64, batch=4, seq=32),
         "small": dict(d_model=64, layers=2, heads=4, experts=4, hidden=128, batch=32, seq=128),
         "medium": dict(d_model=256, layers=4, heads=4, experts=8, hidden=512, batch=16, seq=256)}


def build(which: str, size: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if which == "gmnn":
        return MoETransformerLM(input_shape=(size["seq"],), num_classes=256, num_experts=size["experts"],
                                d_model=size["d_model"], num_layers=size["layers"], num_heads=size["heads"],
                                expert_hidden=size["hidden"], k=2, expert_type="swiglu", norm="rmsnorm",
                                position="rope", attention_bias=False)
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=256, hidden_size=size["d_model"], intermediate_size=size["hidden"],
                           num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                           num_key_value_heads=size["heads"], num_local_experts=size["experts"],
                           num_experts_per_tok=2, max_position_embeddings=size["seq"], tie_word_embeddings=True,
                           attn_implementation="sdpa")
    return MixtralForCausalLM(config)


def train_step(which: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, tokens: torch.Tensor,
               targets: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    if which == "gmnn":
        logits, aux = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + aux
    else:
        logits = model(input_ids=tokens, use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()


def batch(size: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (size["batch"], size["seq"] + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def speed(size: dict, steps: int, compiled: bool = False) -> dict:
    """Median step seconds of both models, alternating step by step (two warm-up steps each; three when
    ``compiled``: each model's forward and backward through ``torch.compile``, Adam eager)."""
    models = {name: build(name, size) for name in ("gmnn", "hf")}
    for m in models.values():
        m.train()
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=3e-3) for name, m in models.items()}
    runners = {name: torch.compile(m) if compiled else m for name, m in models.items()}
    warm_up = 3 if compiled else 2
    times: dict = {name: [] for name in models}
    for step in range(steps + warm_up):
        tokens, targets = batch(size, step)
        for name, model in (runners.items() if step % 2 else reversed(list(runners.items()))):
            start = time.perf_counter()
            train_step(name, model, optimizers[name], tokens, targets)
            if step >= warm_up:
                times[name].append(time.perf_counter() - start)
    return {"params": {n: parameters(m) for n, m in models.items()},
            "step_s": {n: statistics.median(t) for n, t in times.items()}}


#: Kernels both models call on the same shapes: the matrix products (expert, attention projection and output
#: matmuls; the grouped expert matmul runs them on the CPU) and the attention kernel with its backward.
SHARED_KERNELS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def kernel_split(size: dict, steps: int = 3) -> dict:
    """Per model: milliseconds a step in all and in :data:`SHARED_KERNELS` (self CPU time, under the profiler)."""
    from torch.profiler import ProfilerActivity, profile

    split = {}
    for name in ("gmnn", "hf"):
        model = build(name, size)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(2):
            train_step(name, model, optimizer, *batch(size, step))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for step in range(steps):
                train_step(name, model, optimizer, *batch(size, step))
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
        shared = sum(e.self_cpu_time_total for e in events if e.key in SHARED_KERNELS) / 1e3 / steps
        split[name] = {"step_ms": total, "shared_ms": shared}
    return split


def memory(which: str, size_name: str, steps: int, threads: int) -> None:
    """One model alone in this process: print JSON of the resident set after building and one warm-up step,
    and its peak during the training steps."""
    torch.set_num_threads(threads)
    size = SIZES[size_name]
    model = build(which, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_step(which, model, optimizer, *batch(size, 0))  # Adam's state exists from here on
    built = rss_mib()

    def train() -> None:
        for step in range(steps):
            train_step(which, model, optimizer, *batch(size, step))

    peak = peak_rss_during(train, 5e-4)
    print(json.dumps({"built_mib": built, "peak_mib": peak,
                      "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=["small", "medium"], choices=sorted(SIZES))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--memory", action="store_true", help="peak RSS of each model in its own process")
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--kernels", action="store_true", help="split each step into the shared kernels and the rest")
    parser.add_argument("--compile", action="store_true", help="both models through torch.compile (forward and backward)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.memory_child:
        memory(args.memory_child[0], args.memory_child[1], args.steps, args.threads[0])
        return
    sizes, steps = (["quick"], 2) if args.quick else (args.sizes, args.steps)
    results = []
    for size_name in sizes:
        size = SIZES[size_name]
        tokens = size["batch"] * size["seq"]
        for threads in args.threads:
            torch.set_num_threads(threads)
            load = os.getloadavg()[0]
            r = speed(size, steps, args.compile)
            row = {"size": size_name, "threads": threads, "compiled": args.compile, "load_before": load,
                   "load_after": os.getloadavg()[0], **r}
            results.append(row)
            g, h = r["step_s"]["gmnn"], r["step_s"]["hf"]
            print(f"| {size_name} ({size['d_model']}d, {size['layers']}L, E{size['experts']}, h{size['hidden']}, "
                  f"{size['batch']}x{size['seq']}){' compiled' if args.compile else ''} | {threads} | {r['params']['gmnn']:,} | {r['params']['hf']:,} | "
                  f"{tokens / g:,.0f} | {tokens / h:,.0f} | {h / g:.2f}x | {load:.2f} / {row['load_after']:.2f} |",
                  flush=True)
        if args.kernels:
            torch.set_num_threads(1)
            split = kernel_split(size, 1 if args.quick else 3)
            results.append({"size": size_name, "threads": 1, "kernels": split})
            hf = split["hf"]
            print("| size | model | ms a step (profiled, 1 thread) | shared kernels ms | share | rest ms | "
                  "bound: HF step / shared kernels |", flush=True)
            for which, k in split.items():
                print(f"| {size_name} | {which} | {k['step_ms']:.1f} | {k['shared_ms']:.1f} | {k['shared_ms'] / k['step_ms']:.0%} | "
                      f"{k['step_ms'] - k['shared_ms']:.1f} | {hf['step_ms'] / k['shared_ms']:.2f}x |", flush=True)
        if args.memory:
            for which in ("gmnn", "hf"):
                out = subprocess.run([sys.executable, __file__, "--memory-child", which, size_name, "--steps",
                                      str(steps), "--threads", "1"], capture_output=True, text=True, check=True)
                mem = json.loads(out.stdout.strip().splitlines()[-1])
                results.append({"size": size_name, "model": which, **mem})
                print(f"| {size_name} | {which} | {mem['built_mib']:.0f} | {mem['peak_mib']:.0f} | "
                      f"{mem['peak_mib'] - mem['built_mib']:.0f} | {mem['maxrss_mib']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
