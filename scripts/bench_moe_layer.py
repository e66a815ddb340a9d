"""Speed of gmnn's MoELayer per router beside Hugging Face's Mixtral block, and the large-matmul rate.

Forward + backward of ``out.square().mean() (+ aux)`` on ``tokens`` tokens,
d_model 512, expert hidden 1024, E = 8 / 16 / 32, top-2 (expert choice:
capacity factor 2; Soft MoE: as many slots per sequence of 512 tokens as
top-2 computes rows). All rows are timed round after round, interleaved, so
they see the same machine load; a row's time is the fastest of the rounds.

Columns: ms; the rate in expert GFLOP/s (the expert matmuls of forward and
backward only: ``3 * 2 * rows * matrices * d_model * hidden``, rows = tokens *
k); the ratio of ms per expert FLOP to HF's Mixtral block (SwiGLU, 3
matrices, its default eager loop over experts) and to the same block with
``experts_implementation="grouped_mm"`` at the same E; the fraction of the rate of
one large fp32 matmul; and time at E over time at E = 8.

    OMP_NUM_THREADS=2 python scripts/bench_moe_layer.py --json bench_moe_layer.json
    python scripts/bench_moe_layer.py --quick          # smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gmnn.nn import (  # noqa: E402
    ExpertChoiceRouter,
    MLPExperts,
    MoELayer,
    SigmoidRouter,
    SoftmaxTopKRouter,
    SoftMoERouter,
    SwiGLUExperts,
)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(n: int, repeats: int, device: str) -> float:
    """GFLOP/s of the fastest ``[n, n] @ [n, n]`` fp32 matmul."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def build(name: str, d: int, h: int, e: int, seq_len: int, tokens: int) -> tuple[torch.nn.Module, int]:
    """A layer and its number of expert weight matrices (2 for GELU MLP, 3 for SwiGLU)."""
    if name.startswith("hf-mixtral"):
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        implementation = "grouped_mm" if name.endswith("grouped_mm") else None  # None: the eager loop over experts
        block = MixtralSparseMoeBlock(MixtralConfig(hidden_size=d, intermediate_size=h, num_local_experts=e,
                                                    num_experts_per_tok=2, experts_implementation=implementation))
        for p in block.parameters():
            torch.nn.init.normal_(p, std=d**-0.5)
        return block, 3
    swiglu = SwiGLUExperts(d, h, e)
    routers = {
        "softmax top-2, GELU MLP": (lambda: SoftmaxTopKRouter(d, e, 2), MLPExperts(d, h, e), 0.0),
        "softmax top-2": (lambda: SoftmaxTopKRouter(d, e, 2), swiglu, 0.0),
        "softmax top-2, capacity 1.25": (lambda: SoftmaxTopKRouter(d, e, 2), swiglu, 1.25),
        "sigmoid top-2, aux-free bias": (lambda: SigmoidRouter(d, e, 2, balance_rate=1e-3), swiglu, 0.0),
        "expert choice, c = 2": (lambda: ExpertChoiceRouter(d, e, capacity_factor=2.0), swiglu, 0.0),
        "soft MoE": (lambda: SoftMoERouter(d, e, slots=max(1, 2 * seq_len // e)), swiglu, 0.0),
    }
    router, experts, capacity = routers[name]
    return MoELayer(router=router(), experts=experts, capacity_factor=capacity), 2 if name.endswith("GELU MLP") else 3


def step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    out = layer(x)
    loss = out[0].square().mean() + out[1] if isinstance(out, tuple) else out.square().mean()
    loss.backward()


def measure(tokens: int, d: int, h: int, sizes: list[int], seq_len: int, repeats: int, device: str) -> dict:
    """Time every (router, E) row, interleaved round after round; print the table and return the figures.

    Returns:
        ``{"matmul_gflops": [before, after], "rows": [...], "load": os.getloadavg()}``: one row per
        router and E, with the columns of the module docstring.
    """
    names = ["hf-mixtral", "hf-mixtral grouped_mm", "softmax top-2, GELU MLP", "softmax top-2", "softmax top-2, capacity 1.25",
             "sigmoid top-2, aux-free bias", "expert choice, c = 2", "soft MoE"]
    x = torch.randn(tokens // seq_len, seq_len, d, device=device)
    torch.manual_seed(0)
    layers = {(n, e): build(n, d, h, e, seq_len, tokens) for e in sizes for n in names}
    layers = {key: (layer.to(device), mats) for key, (layer, mats) in layers.items()}
    matmul_size = 2048 if d >= 512 else 512
    reference = matmul_rate(matmul_size, repeats, device)
    times: dict = {key: float("inf") for key in layers}
    for _ in range(repeats + 1):  # the first round warms up and counts like the others (fastest kept)
        for key, (layer, _) in layers.items():
            layer.zero_grad(set_to_none=True)
            sync(device)
            start = time.perf_counter()
            step(layer, x)
            sync(device)
            times[key] = min(times[key], time.perf_counter() - start)
    reference_after = matmul_rate(matmul_size, repeats, device)
    print(f"\n{tokens} tokens, d_model {d}, hidden {h}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"large fp32 matmul {reference:.1f} GFLOP/s before, {reference_after:.1f} after; load {os.getloadavg()}\n")
    print("| router | E | ms | expert GFLOP/s | per FLOP / HF | / HF grouped_mm | of matmul rate | / E=8 |\n"
          "|---|---|---|---|---|---|---|---|")
    rows = []
    rate_ref = max(reference, reference_after)
    for (name, e), (_, mats) in layers.items():
        flops = 3 * 2 * tokens * 2 * mats * d * h
        ms = 1e3 * times[(name, e)]
        hf_flops = 3 * 2 * tokens * 2 * 3 * d * h
        per_flop_hf = (times[(name, e)] / flops) / (times[("hf-mixtral", e)] / hf_flops)
        per_flop_hf_grouped = (times[(name, e)] / flops) / (times[("hf-mixtral grouped_mm", e)] / hf_flops)
        rate = flops / times[(name, e)] / 1e9
        scale = times[(name, e)] / times[(name, sizes[0])]
        rows.append({"router": name, "E": e, "ms": ms, "gflops": rate, "per_flop_over_hf": per_flop_hf,
                     "per_flop_over_hf_grouped_mm": per_flop_hf_grouped,
                     "of_matmul_rate": rate / rate_ref, "over_first_E": scale})
    for row in sorted(rows, key=lambda r: (names.index(r["router"]), r["E"])):
        print(f"| {row['router']} | {row['E']} | {row['ms']:.0f} | {row['gflops']:.1f} | {row['per_flop_over_hf']:.2f} | "
              f"{row['per_flop_over_hf_grouped_mm']:.2f} | "
              f"{row['of_matmul_rate']:.0%} | {row['over_first_E']:.2f} |")
    return {"matmul_gflops": [reference, reference_after], "rows": rows, "load": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    tokens, d, h, sizes, seq_len = (256, 64, 128, [4, 8], 64) if args.quick else (4096, 512, 1024, [8, 16, 32], 512)
    results = measure(tokens, d, h, sizes, seq_len, args.repeats, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
