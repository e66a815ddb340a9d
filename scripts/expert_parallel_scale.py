"""Expert parallelism on paper (and, with --measure, on this machine's CPUs).

For tokens per rank T, k, d_model, hidden, E experts and P ranks, prints per MoE layer and training step:
the all-to-all bytes one rank sends to the others (dispatch + combine, forward and backward; GShard, Lepikhin
et al., 2021; DeepSpeed-MoE, Rajbhandari et al., 2022), what DDP's all-reduce of the replicated experts
would move instead, the expert memory per rank (weights, gradients, Adam moments) and the expert FLOPs per
rank. Uniform routing is assumed (a fraction (P-1)/P of the routed rows leaves the rank).

    python scripts/expert_parallel_scale.py --tokens 8192 --k 2 --d-model 4096 --hidden 14336 --experts 8 --ranks 8 --gated
    python scripts/expert_parallel_scale.py --tokens 2048 --d-model 64 --hidden 128 --experts 4 --measure

``--measure`` times forward + backward of one layer with P = 1 and P = 2 gloo CPU processes (one thread
each) and the time inside the two all-to-alls.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def paper(tokens: int, k: int, d_model: int, hidden: int, experts: int, ranks: int, gated: bool, bytes_per: int,
          capacity_factor: float) -> dict[str, float]:
    """The per-layer, per-step figures of one rank (see the module docstring)."""
    if experts % ranks:
        raise ValueError(f"ranks={ranks} must divide experts={experts}")
    first = 2 * hidden if gated else hidden
    per_expert = d_model * first + hidden * d_model  # weights, no biases
    rows = capacity_factor * tokens * k if capacity_factor > 0 else tokens * k  # rows sent per exchange
    off_rank = (ranks - 1) / ranks
    a2a = 4 * rows * d_model * bytes_per * off_rank  # dispatch, combine; forward and backward
    local = experts // ranks
    return {
        "all_to_all_bytes": a2a,
        "ddp_allreduce_bytes_if_replicated": 2 * off_rank * experts * per_expert * bytes_per,
        "expert_params_per_rank": local * per_expert,
        "expert_memory_bytes_per_rank": local * per_expert * (2 * bytes_per + 8),  # weights, grads, fp32 Adam m, v
        "expert_flops_per_rank": 3 * 2 * rows * per_expert,  # forward 2*rows*params, backward twice that
    }


def _human(value: float, unit: str) -> str:
    for prefix in ["", "K", "M", "G", "T", "P"]:
        if abs(value) < 1000:
            return f"{value:8.2f} {prefix}{unit}"
        value /= 1000
    return f"{value:.2f} E{unit}"


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    import torch
    import torch.distributed as dist

    from gmnn.nn import MoELayer
    from gmnn.nn import expert_parallel as ep

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    layer = ep.ExpertParallelMoELayer(MoELayer(args.d_model, args.hidden, args.experts, k=args.k,
                                               capacity_factor=args.capacity_factor))
    spent = [0.0]
    original = ep._AllToAll.forward, ep._AllToAll.backward

    def timed(fn):
        def run(*a):
            start = time.perf_counter()
            result = fn(*a)
            spent[0] += time.perf_counter() - start
            return result
        return staticmethod(run)

    ep._AllToAll.forward, ep._AllToAll.backward = timed(original[0]), timed(original[1])
    x = torch.randn(args.tokens, args.d_model, requires_grad=True)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            dist.barrier()
            spent[0], start = 0.0, time.perf_counter()
        out_, aux = layer(x)
        (out_.square().mean() + aux).backward()
    dist.barrier()
    total = (time.perf_counter() - start) / args.steps
    Path(out, f"{world}-{rank}").write_text(f"{total} {spent[0] / args.steps}")
    dist.destroy_process_group()


def measure(args: argparse.Namespace) -> None:
    import multiprocessing

    for world in (1, 2):
        with tempfile.TemporaryDirectory() as out, socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            context = multiprocessing.get_context("spawn")
            procs = [context.Process(target=_worker, args=(r, world, port, args, out)) for r in range(world)]
            for proc in procs:
                proc.start()
            for proc in procs:
                proc.join(timeout=300)
                if proc.is_alive():
                    proc.kill()
                    raise SystemExit(f"P={world}: a worker hung")
            times = [tuple(map(float, Path(out, f"{world}-{r}").read_text().split())) for r in range(world)]
        step = max(t for t, _ in times)
        comm = sum(c for _, c in times) / world
        print(f"measured P={world}: {step * 1e3:8.1f} ms per forward+backward, {args.tokens / step:9.0f} tokens/s "
              f"per process, {world * args.tokens / step:9.0f} tokens/s in all, all-to-all {100 * comm / step:4.1f}% of the step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per rank and step (batch * seq_len)")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--gated", action="store_true", help="SwiGLU experts (3 matrices)")
    parser.add_argument("--bytes", type=int, default=2, help="bytes per element (2: bf16)")
    parser.add_argument("--capacity-factor", type=float, default=0.0, help="0: dropless")
    parser.add_argument("--measure", action="store_true", help="time P=1 vs P=2 on CPU (float32)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    figures = paper(args.tokens, args.k, args.d_model, args.hidden, args.experts, args.ranks, args.gated,
                    args.bytes, args.capacity_factor)
    print(f"T={args.tokens} per rank, k={args.k}, d_model={args.d_model}, hidden={args.hidden}, E={args.experts}, "
          f"P={args.ranks}, {'SwiGLU' if args.gated else 'MLP'}, {args.bytes} B/element, per MoE layer and step:")
    print(f"  all-to-all sent per rank (4 exchanges)   {_human(figures['all_to_all_bytes'], 'B')}")
    print(f"  DDP all-reduce if experts replicated     {_human(figures['ddp_allreduce_bytes_if_replicated'], 'B')}")
    print(f"  expert parameters per rank               {_human(figures['expert_params_per_rank'], '')}")
    print(f"  expert memory per rank (w, g, Adam)      {_human(figures['expert_memory_bytes_per_rank'], 'B')}")
    print(f"  expert FLOPs per rank (fwd + bwd)        {_human(figures['expert_flops_per_rank'], 'FLOP')}")
    if args.measure:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        measure(args)


if __name__ == "__main__":
    main()
