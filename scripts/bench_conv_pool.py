"""Time ``gmnn.nn.functional.conv_pool`` against ``conv2d`` + ``max_pool2d`` (forward + weight backward), ratios in one run.

The shapes are the paper's MNIST layers at batch 512: the gate's 1 filter, the 5 experts' filters
(one filter each, run together) and 16 filters. Each row is the median of ``--repeats`` timings of
``--steps`` steps, the two implementations interleaved so that load on the machine hits both.

Usage::

    python scripts/bench_conv_pool.py
    python scripts/bench_conv_pool.py --batch 128 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gmnn.nn.functional.conv_pool import conv_maxpool2


def step_time(fn: Callable[[], torch.Tensor], weight: torch.Tensor, steps: int) -> float:
    """Seconds per forward + backward of ``fn`` (the weight's gradient only, as for an input layer)."""
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
        torch.autograd.grad(out.square().sum(), weight)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    print(f"batch {args.batch}, 1x28x28 input, 3x3 filters, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'filters':>8} {'conv2d+max_pool2d':>18} {'conv_maxpool2':>14} {'speed-up':>9}")
    for filters in (1, 5, 16):
        weight = torch.randn(filters, 1, 3, 3, requires_grad=True)
        bias = torch.randn(filters, requires_grad=True)

        def standard() -> torch.Tensor:
            return F.max_pool2d(F.conv2d(x, weight, bias), 2)

        def fused() -> torch.Tensor:
            return conv_maxpool2(x, weight, bias)

        for fn in (standard, fused):  # warm-up
            step_time(fn, weight, 3)
        times: dict[str, list[float]] = {"standard": [], "fused": []}
        for _ in range(args.repeats):
            times["standard"].append(step_time(standard, weight, args.steps))
            times["fused"].append(step_time(fused, weight, args.steps))
        a, b = statistics.median(times["standard"]), statistics.median(times["fused"])
        print(f"{filters:>8} {a * 1e3:>15.2f} ms {b * 1e3:>11.2f} ms {a / b:>8.2f}x")


if __name__ == "__main__":
    main()
