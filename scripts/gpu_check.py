"""The GPU check: every benchmark row, fits on the GPU, bf16, ``torch.compile`` and grouped matmuls, in one JSON.

On a machine with CUDA this runs, each step under its own time budget and all within ``--budget``
seconds (8 minutes by default):

* ``grouped_mm``: ``gmnn.nn.functional.grouped`` (``torch._grouped_mm``) in float32 and bfloat16 where this
  build supports it: :func:`grouped_linear` against a loop over groups (values and gradients), and
  ``MoELayer`` with its grouped path against the same layer with the loop over experts (values and
  gradients, bf16 under autocast), with times;
* ``fit_toy``, ``fit_lm``, ``fit_lm_bf16``: ``gmnn fit`` of ``configs/toy/dense.yaml`` and
  ``configs/lm/top2_switch.yaml`` (the latter also with ``--trainer.precision=bf16-mixed``) with
  ``--trainer.accelerator=gpu``, the configs' defaults kept (progress bar, figures, checkpoints,
  TensorBoard) apart from size limits (``max_epochs``, ``limit_train_batches``, ``limit_val_batches``);
  the toy data and the LM's text (Python's own standard library) are built on the machine, nothing
  is downloaded;
* ``log_fast_path``: ``gmnn.cli.logging_speed`` on the device: a small ``LightningModule`` fitted with
  Lightning's own ``_ResultMetric.to`` and with the fast path logs the same values, and the fast path
  skipped Lightning's walk;
* ``compile_moe_layer``: ``torch.compile`` of a top-2 ``MoELayer``, forward and backward, against
  eager (outputs, aux loss and gradients), in float32 and under bf16 autocast;
* ``bench_layer``, ``bench_memory``, ``bench_moe_layer``, ``bench_training``: the rows of
  ``scripts/bench.py`` (MoELayer against E, memory against tokens, the paper MNIST model's training
  throughput, gmnn against ``benchmarks/naive.py``) and of ``scripts/bench_moe_layer.py`` (every router
  beside Hugging Face's Mixtral block), through those scripts' own functions.

A step that fails or runs out of its budget is recorded with its error and the next one runs. The
JSON is rewritten after every step, so a run stopped from outside keeps what it finished. Its fields:
``ok`` (every step ok), ``device``, ``device_name``, ``torch``, ``cuda``, versions, and per step
``ok``, ``error``, ``seconds``, ``budget_s`` and ``figures``.

    python scripts/gpu_check.py --json gpu_check.json             # on a CUDA machine
    scripts/gpu_check.sh gpu_check.json                            # the same, with a hard stop at 8 minutes
    python scripts/gpu_check.py --dry-run --json /tmp/check.json   # the same steps on the CPU, tiny sizes

``--dry-run`` compiles with the ``aot_eager`` backend (Inductor's C++ build takes about a minute on
two cores); on CUDA the backend is Inductor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from gmnn._deferred import install as defer_unused_imports  # noqa: E402

# run as a script, as the gmnn command: torchmetrics' unused metric domains and Lightning's compiler imports
# load when used (gmnn._deferred); imported as a module, it leaves the importer's imports alone
if __name__ == "__main__":
    defer_unused_imports()

import bench  # noqa: E402  (scripts/bench.py)
import bench_moe_layer  # noqa: E402  (scripts/bench_moe_layer.py)
import torch  # noqa: E402

TOY_CONFIG = ROOT / "configs" / "toy" / "dense.yaml"
LM_CONFIG = ROOT / "configs" / "lm" / "top2_switch.yaml"


class StepTimeout(BaseException):
    """A step ran past its budget (a BaseException, so that ``except Exception`` inside the step lets it through)."""


@dataclass(frozen=True)
class Sizes:
    """Problem sizes and step budgets of one mode (on the GPU, or the CPU dry run)."""

    training: dict[str, int]
    layer: dict[str, Any]
    moe_layer: dict[str, Any]
    fit_toy: list[str]
    fit_lm: list[str]
    compile_layer: dict[str, int]
    grouped: dict[str, int]
    timing_repeats: int
    budgets: dict[str, float] = field(default_factory=dict)


GPU = Sizes(
    training=dict(batch=512, steps=8, rounds=2),
    layer=dict(tokens=4096, d_model=64, hidden=128, experts=[4, 8, 16, 32], repeats=5),
    moe_layer=dict(tokens=4096, d=512, h=1024, sizes=[8, 16, 32], seq_len=512, repeats=3),
    fit_toy=["--trainer.max_epochs=2", "--trainer.limit_train_batches=20", "--trainer.limit_val_batches=5"],
    fit_lm=["--trainer.max_epochs=1", "--trainer.limit_train_batches=30", "--trainer.limit_val_batches=4"],
    compile_layer=dict(tokens=4096, d_model=512, hidden=1024, experts=8, k=2),
    grouped=dict(rows=8192, d_model=512, hidden=1024, experts=8),
    timing_repeats=10,
    budgets=dict(grouped_mm=30, fit_toy=60, fit_lm=60, fit_lm_bf16=60, log_fast_path=20, compile_moe_layer=100,
                 bench_layer=40, bench_memory=20, bench_moe_layer=60, bench_training=90),
)
DRY_RUN = Sizes(
    training=dict(batch=16, steps=2, rounds=1),
    layer=dict(tokens=32, d_model=4, hidden=8, experts=[4, 8], repeats=1),
    moe_layer=dict(tokens=128, d=16, h=32, sizes=[4, 8], seq_len=32, repeats=1),
    fit_toy=["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
             "--data.init_args.num_samples=2000"],
    fit_lm=["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
            "--data.init_args.num_train=128", "--data.init_args.num_val=64", "--data.init_args.source_bytes=20000",
            "--data.init_args.batch_size=8", "--data.init_args.seq_len=64"],
    compile_layer=dict(tokens=64, d_model=16, hidden=32, experts=4, k=2),
    grouped=dict(rows=96, d_model=16, hidden=32, experts=4),
    timing_repeats=2,
    budgets=dict(grouped_mm=60, fit_toy=90, fit_lm=90, fit_lm_bf16=90, log_fast_path=60, compile_moe_layer=90,
                 bench_layer=60, bench_memory=60, bench_moe_layer=60, bench_training=120),
)


@dataclass
class Context:
    """What every step gets: the device, the sizes, the compile backend and a scratch folder."""

    device: str
    sizes: Sizes
    compile_backend: str
    scratch: Path


# ----------------------------------------------------------------------------------------------- helpers


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, in float32."""
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def scale(t: torch.Tensor) -> float:
    """Largest absolute value (at least 1e-6), to turn differences into relative ones."""
    return max(float(t.float().abs().max()) if t.numel() else 0.0, 1e-6)


def autocast(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device for ``dtype=torch.bfloat16``, nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (SIGALRM)."""

    def expire(signum: int, frame: object) -> None:
        raise StepTimeout(f"ran past its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """Run inside ``path`` (the fits write their run folder, ``runs/``, relative to the working directory)."""
    before = Path.cwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def environment(device: str) -> dict[str, Any]:
    """Device name, versions and capabilities."""
    import pytorch_lightning

    info: dict[str, Any] = {
        "device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "pytorch_lightning": pytorch_lightning.__version__, "python": platform.python_version(),
        "host": platform.node(), "cpu_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                    bf16_supported=torch.cuda.is_bf16_supported(), driver=_driver())
    else:
        info.update(device_name=platform.processor() or platform.machine(), bf16_supported=True)
    return info


def _driver() -> str | None:
    """The NVIDIA driver version, where ``nvidia-smi`` answers."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------------------- steps


def step_grouped_mm(ctx: Context, figures: dict[str, Any]) -> None:
    """``grouped_linear`` against a loop over groups, and MoELayer's grouped path against its loop, per dtype."""
    from gmnn.nn.functional.grouped import grouped_mm_works

    checked = 0
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        entry: dict[str, Any] = {"grouped_mm_works": grouped_mm_works(torch.device(ctx.device).type, dtype)}
        figures[name] = entry
        if not entry["grouped_mm_works"]:
            continue
        checked += 1
        entry["tolerance"] = 1e-4 if dtype == torch.float32 else 3e-2
        entry.update(_grouped_linear_case(ctx, dtype))
        entry.update(_grouped_layer_case(ctx, dtype))
        worst = max(entry[key] for key in ("linear_rel_diff", "linear_grad_rel_diff", "layer_rel_diff", "layer_grad_rel_diff"))
        if worst > entry["tolerance"]:
            raise AssertionError(f"grouped and looped results differ in {name}: relative {worst:.2e} > {entry['tolerance']:g}")
    if not checked:
        raise RuntimeError(f"torch._grouped_mm runs in no dtype on {ctx.device}: {figures}")


def _grouped_linear_case(ctx: Context, dtype: torch.dtype) -> dict[str, Any]:
    """:func:`grouped_linear` against a loop over the groups (uneven, one empty): values, gradients, times."""
    from gmnn.nn.functional.grouped import can_group, grouped_linear

    s, device = ctx.sizes.grouped, ctx.device
    torch.manual_seed(0)
    sizes = torch.tensor([0] + [s["rows"] // (s["experts"] - 1)] * (s["experts"] - 1))
    sizes[-1] += s["rows"] - int(sizes.sum())
    group = torch.repeat_interleave(torch.arange(s["experts"]), sizes).to(device)
    offsets = sizes.cumsum(0).to(device=device, dtype=torch.int32)
    x = torch.randn(s["rows"], s["d_model"], device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(s["experts"], s["hidden"], s["d_model"], device=device) * s["d_model"] ** -0.5).to(dtype).requires_grad_()
    b = torch.randn(s["experts"], s["hidden"], device=device, dtype=dtype, requires_grad=True)
    inputs = (x, w, b)

    def grouped() -> torch.Tensor:
        return grouped_linear(x, w, b, offsets, group)

    def looped() -> torch.Tensor:
        return torch.cat([part @ w[e].t() + b[e] for e, part in enumerate(x.split(sizes.tolist()))])

    grad_out = torch.randn(s["rows"], s["hidden"], device=device, dtype=dtype)
    y_grouped, y_loop = grouped(), looped()
    grads_grouped = torch.autograd.grad(y_grouped, inputs, grad_out)
    grads_loop = torch.autograd.grad(y_loop, inputs, grad_out)
    repeats = ctx.sizes.timing_repeats
    return {
        "can_group": can_group(x, s["d_model"], s["hidden"]),
        "linear_rel_diff": max_diff(y_grouped, y_loop) / scale(y_loop),
        "linear_grad_rel_diff": max(max_diff(a, c) / scale(c) for a, c in zip(grads_grouped, grads_loop)),
        "linear_grouped_ms": median_ms(lambda: torch.autograd.grad(grouped().float().square().mean(), inputs), device, repeats),
        "linear_loop_ms": median_ms(lambda: torch.autograd.grad(looped().float().square().mean(), inputs), device, repeats),
    }


def _grouped_layer_case(ctx: Context, dtype: torch.dtype) -> dict[str, Any]:
    """A top-2 MoELayer on its grouped path against the same layer looping over experts (bf16: autocast)."""
    from gmnn.nn import MoELayer

    s, device = ctx.sizes.grouped, ctx.device
    torch.manual_seed(0)
    layer = MoELayer(s["d_model"], s["hidden"], s["experts"], k=2).to(device)
    tokens = torch.randn(s["rows"] // 2, s["d_model"], device=device)

    def layer_step() -> torch.Tensor:
        with autocast(device, dtype):
            out, aux = layer(tokens)
            loss = out.float().square().mean() + aux
        loss.backward()
        return out.detach().float()

    figures: dict[str, Any] = {}
    results = {}
    try:
        for path in ("grouped", "loop"):
            if path == "loop":
                layer.experts.can_group = lambda rows: False  # this instance only: the loop over experts
            layer.zero_grad(set_to_none=True)
            out = layer_step()
            results[path] = (out, {n: p.grad.clone() for n, p in layer.named_parameters()})
            figures[f"layer_{path}_ms"] = median_ms(layer_step, device, ctx.sizes.timing_repeats)
    finally:
        layer.experts.__dict__.pop("can_group", None)
    (out_grouped, grads_grouped), (out_loop, grads_loop) = results["grouped"], results["loop"]
    figures["layer_rel_diff"] = max_diff(out_grouped, out_loop) / scale(out_loop)
    figures["layer_grad_rel_diff"] = max(max_diff(grads_grouped[n], g) / scale(g) for n, g in grads_loop.items())
    return figures


def fit(ctx: Context, figures: dict[str, Any], config: Path, limits: list[str], extra: list[str], folder: str) -> None:
    """``gmnn fit --config CONFIG`` on the device in a scratch folder; the run's figures into ``figures``."""
    from gmnn.cli import make_cli

    accelerator = "gpu" if ctx.device.startswith("cuda") else "cpu"
    args = ["fit", "--config", str(config), f"--trainer.accelerator={accelerator}", "--trainer.devices=1", *limits, *extra]
    figures["args"] = args[1:]
    with working_dir(ctx.scratch / folder):
        start = time.perf_counter()
        cli = make_cli(args)
        seconds = time.perf_counter() - start
    trainer = cli.trainer
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    run = Path(trainer.log_dir) if trainer.log_dir else None
    if run is not None and not run.is_absolute():
        run = ctx.scratch / folder / run
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) if run and run.is_dir() else []
    figures.update({
        "fit_seconds": seconds, "global_step": trainer.global_step,
        "epochs": trainer.current_epoch, "steps_per_s": trainer.global_step / seconds if seconds else None,
        "root_device": str(trainer.strategy.root_device), "precision": trainer.precision,
        "parameter_device": str(next(cli.model.parameters()).device),
        "progress_bar": trainer.progress_bar_callback is not None,
        "callbacks": sorted(type(c).__name__ for c in trainer.callbacks),
        "metrics": metrics, "run_files": files, "tensorboard_images": _image_tags(run),
    })
    if ctx.device.startswith("cuda"):
        figures["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if not trainer.global_step:
        raise AssertionError(f"no training step ran: {figures}")
    bad = [name for name, value in metrics.items() if not math.isfinite(value)]
    if bad:
        raise FloatingPointError(f"non-finite metrics {bad}: {figures}")
    if accelerator == "gpu" and not figures["parameter_device"].startswith("cuda"):
        raise AssertionError(f"the model is not on the GPU: {figures['parameter_device']}")


def _image_tags(run: Path | None) -> list[str] | None:
    """Image tags (the figures) in the run's TensorBoard events; None where TensorBoard cannot read them."""
    if run is None or not run.is_dir():
        return None
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    events = EventAccumulator(str(run), size_guidance={"images": 1})
    events.Reload()
    return sorted(events.Tags().get("images", []))


def step_fit_toy(ctx: Context, figures: dict[str, Any]) -> None:
    """The toy config (dense mixture on split_discs) on the device."""
    fit(ctx, figures, TOY_CONFIG, ctx.sizes.fit_toy, [], "fit_toy")


def step_fit_lm(ctx: Context, figures: dict[str, Any]) -> None:
    """The LM config (top-2 softmax routing, Switch balancing) on the device, float32."""
    fit(ctx, figures, LM_CONFIG, ctx.sizes.fit_lm, [], "fit_lm")


def step_fit_lm_bf16(ctx: Context, figures: dict[str, Any]) -> None:
    """The LM config under bf16-mixed precision."""
    fit(ctx, figures, LM_CONFIG, ctx.sizes.fit_lm, ["--trainer.precision=bf16-mixed"], "fit_lm_bf16")


def _logged_values(ctx: Context) -> dict[str, float]:
    """Every value a small ``LightningModule`` logs (per step and epoch, synced evaluation means) in a 2-epoch fit."""
    from gmnn import pl

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss = self.layer(batch[0]).square().mean()
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch[0]))
            return loss

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            self.log("val/loss", self.layer(batch[0]).abs().mean(), sync_dist=True, batch_size=float(len(batch[0])))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(40, 3)), batch_size=6)
    trainer = pl.Trainer(max_epochs=2, accelerator="gpu" if ctx.device.startswith("cuda") else "cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), loader, loader)
    return {name: float(value) for name, value in trainer.callback_metrics.items()}


def step_log_fast_path(ctx: Context, figures: dict[str, Any]) -> None:
    """The logging fast path on the device: the same logged values as Lightning's own method, fewer walks."""
    import importlib

    from gmnn import pl
    from gmnn.cli import logging_speed

    cls = importlib.import_module(f"{pl.root()}.{logging_speed.RESULT_MODULE}")._ResultMetric
    installed = cls.__dict__["to"]
    lightnings = getattr(installed, "__wrapped_to__", installed)
    walks = [0]

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        walks[0] += 1
        return lightnings(self, *args, **kwargs)

    logged, walked = {}, {}
    try:
        for side, to in (("lightning", counted), ("fast_path", logging_speed.skip_when_there(counted))):
            cls.to, walks[0] = to, 0
            logged[side], walked[side] = _logged_values(ctx), walks[0]
    finally:
        cls.to = installed
    figures.update(logged=logged["fast_path"], walks=walked)
    if logged["fast_path"] != logged["lightning"]:
        raise AssertionError(f"logged values differ: {logged}")
    if not walked["fast_path"] < walked["lightning"]:
        raise AssertionError(f"the fast path never skipped Lightning's walk: {walked}")


def step_compile_moe_layer(ctx: Context, figures: dict[str, Any]) -> None:
    """``torch.compile`` of a top-2 MoELayer, forward and backward, against eager; float32 and bf16 autocast."""
    figures["backend"] = ctx.compile_backend
    failures = []
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        name = str(dtype).removeprefix("torch.")
        entry: dict[str, Any] = {"tolerance": tol}
        figures[name] = entry
        try:
            _compile_case(ctx, dtype, entry)
            worst = max(entry["out_rel_diff"], entry["grad_rel_diff"])
            if worst > tol:
                failures.append(f"{name}: compiled and eager differ by {worst:.2e} (relative) > {tol:g}")
        except Exception as error:  # noqa: BLE001  (recorded; the other dtype still runs)
            entry["error"] = _short(error)
            failures.append(f"{name}: {entry['error']}")
    if failures:
        raise RuntimeError("; ".join(failures))


def _compile_case(ctx: Context, dtype: torch.dtype, entry: dict[str, Any]) -> None:
    """One dtype of :func:`step_compile_moe_layer`: figures into ``entry`` as they come."""
    import torch._dynamo

    from gmnn.nn import MoELayer

    s, device = ctx.sizes.compile_layer, ctx.device
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    eager = MoELayer(s["d_model"], s["hidden"], s["experts"], k=s["k"]).to(device)
    compiled_layer = MoELayer(s["d_model"], s["hidden"], s["experts"], k=s["k"]).to(device)
    compiled_layer.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_layer, backend=ctx.compile_backend)
    x = torch.randn(s["tokens"], s["d_model"], device=device)

    def run(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(device, dtype):
            out, aux = module(x)
            loss = out.float().square().mean() + aux
        loss.backward()
        return out.detach().float(), aux.detach().float()

    out_e, aux_e = run(eager)
    start = time.perf_counter()
    out_c, aux_c = run(compiled)
    sync(device)
    entry["first_call_s"] = time.perf_counter() - start
    entry["out_rel_diff"] = max_diff(out_c, out_e) / scale(out_e)
    entry["aux_diff"] = max_diff(aux_c, aux_e)
    eager_params = dict(eager.named_parameters())
    entry["grad_rel_diff"] = max(max_diff(p.grad, eager_params[n].grad) / scale(eager_params[n].grad)
                                 for n, p in compiled_layer.named_parameters())
    entry["graph_breaks"] = sum(torch._dynamo.utils.counters["graph_break"].values())
    entry["eager_ms"] = median_ms(lambda: run(eager), device, ctx.sizes.timing_repeats)
    entry["compiled_ms"] = median_ms(lambda: run(compiled), device, ctx.sizes.timing_repeats)


def step_bench_layer(ctx: Context, figures: dict[str, Any]) -> None:
    """scripts/bench.py (b): MoELayer forward+backward time and memory against E."""
    figures["sizes"] = ctx.sizes.layer
    figures["rows"] = bench.bench_layer(**ctx.sizes.layer, device=ctx.device)
    figures["ratios"] = bench.summary(figures["rows"])


def step_bench_memory(ctx: Context, figures: dict[str, Any]) -> None:
    """scripts/bench.py (c): memory saved for backward against the number of tokens."""
    s = ctx.sizes.layer
    tokens = [s["tokens"] // 4, s["tokens"] // 2, s["tokens"]]
    figures["tokens"] = tokens
    figures["rows"] = bench.memory_vs_tokens(tokens, s["d_model"], s["hidden"], s["experts"][-1], ctx.device)


def step_bench_moe_layer(ctx: Context, figures: dict[str, Any]) -> None:
    """scripts/bench_moe_layer.py: every router beside Hugging Face's Mixtral block."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    figures["sizes"] = ctx.sizes.moe_layer
    figures.update(bench_moe_layer.measure(**ctx.sizes.moe_layer, device=ctx.device))


def step_bench_training(ctx: Context, figures: dict[str, Any]) -> None:
    """scripts/bench.py (a): training throughput of every variant, gmnn against the naive loop."""
    figures["sizes"] = ctx.sizes.training
    figures["rows"] = bench.bench_training(**ctx.sizes.training, device=ctx.device)


#: In the order they run: the checks first, the benchmarks (the longest) last.
STEPS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "grouped_mm": step_grouped_mm,
    "fit_toy": step_fit_toy,
    "fit_lm": step_fit_lm,
    "fit_lm_bf16": step_fit_lm_bf16,
    "log_fast_path": step_log_fast_path,
    "compile_moe_layer": step_compile_moe_layer,
    "bench_layer": step_bench_layer,
    "bench_memory": step_bench_memory,
    "bench_moe_layer": step_bench_moe_layer,
    "bench_training": step_bench_training,
}


# ----------------------------------------------------------------------------------------------- driver


def _short(error: BaseException) -> str:
    """``Type: message``, the message cut to its first 2,000 characters."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 2000 else text[:2000] + " ..."


def write(path: Path, results: dict[str, Any]) -> None:
    """Write the JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, path)


def run_step(name: str, fn: Callable[[Context, dict[str, Any]], None], ctx: Context, budget: float) -> dict[str, Any]:
    """Run one step under its budget; never raises (except KeyboardInterrupt). A failed step keeps the figures it made."""
    print(f"\n=== {name} (budget {budget:.0f} s) ===", flush=True)
    record: dict[str, Any] = {"ok": False, "error": None, "seconds": None, "budget_s": round(budget, 1), "figures": {}}
    if ctx.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        with time_limit(budget):
            fn(ctx, record["figures"])
        record["ok"] = True
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit, StepTimeout) as error:  # noqa: BLE001  (SystemExit: a CLI usage error)
        record["error"] = _short(error)
        record["traceback"] = traceback.format_exc(limit=-8)
    finally:
        sync_error = None
        try:
            sync(ctx.device)
        except Exception as error:  # noqa: BLE001  (an asynchronous CUDA error surfaces here)
            sync_error = _short(error)
        record["seconds"] = round(time.perf_counter() - start, 3)
        if sync_error:
            record["ok"], record["error"] = False, record["error"] or sync_error
    print(f"=== {name}: {'ok' if record['ok'] else 'FAILED: ' + str(record['error'])[:500]} "
          f"({record['seconds']:.1f} s) ===", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the steps, write the JSON; exit status 0 when every step is ok, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="gpu_check.json", help="where to write the results")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny sizes")
    parser.add_argument("--device", default=None, help="cuda (default where CUDA is available) or cpu (implies --dry-run sizes)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), help="run only these steps")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor on CUDA, aot_eager in a dry run)")
    parser.add_argument("--scratch", default=None, help="folder for the fits' run folders (default: a temporary one)")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available (use --dry-run for the CPU)")
    dry = args.dry_run or not device.startswith("cuda")
    sizes = DRY_RUN if dry else GPU
    backend = args.compile_backend or ("aot_eager" if dry else "inductor")
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    out = Path(args.json).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {"script": "scripts/gpu_check.py", "mode": "dry-run" if dry else "gpu", "ok": False,
                               "budget_s": args.budget, "compile_backend": backend, **environment(device),
                               "steps": {}}
    names = args.steps or list(STEPS)
    with contextlib.ExitStack() as stack:
        scratch = Path(args.scratch) if args.scratch else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check_")))
        ctx = Context(device=device, sizes=sizes, compile_backend=backend, scratch=scratch.resolve())
        for name in names:
            left = args.budget - (time.perf_counter() - start)
            budget = min(sizes.budgets[name], left)
            if budget < 5:
                results["steps"][name] = {"ok": False, "error": f"skipped: {max(left, 0):.0f} s of the total budget left",
                                          "seconds": 0.0, "budget_s": 0.0, "figures": {}}
            else:
                results["steps"][name] = run_step(name, STEPS[name], ctx, budget)
            results["seconds"] = round(time.perf_counter() - start, 3)
            write(out, results)
    results["ok"] = all(step["ok"] for step in results["steps"].values())
    results["seconds"] = round(time.perf_counter() - start, 3)
    write(out, results)
    print(f"\n{'every step ok' if results['ok'] else 'FAILED: ' + ', '.join(n for n, s in results['steps'].items() if not s['ok'])}"
          f" in {results['seconds']:.0f} s; wrote {out}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
