"""Framework overhead: ``gmnn fit`` of the paper's dense MNIST model against a bare PyTorch loop, per epoch.

The floor is the loop a user would write: the same model (``configs/paper/mnist/dense.yaml``'s
``DenseMoE``, built here from gmnn's blocks: :class:`~gmnn.nn.mixture.experts.Experts` of conv networks, a
conv gate, the softmax of the mixture), the same data tensors (``MNISTDataModule``'s split, shuffled
and gathered a batch at a time), the same Adam (:func:`gmnn.models.optim.adam`: lr 1e-3, L2 decay 1e-3)
and, after every training epoch, the same validation pass (loss and accuracy of the 10k held-out
images under ``torch.inference_mode``). It runs with the process settings of the ``gmnn`` command
(:func:`gmnn.cli.process.tune_malloc`), so that the two differ only in the framework.

gmnn's side is the command itself, ``python -m gmnn.cli fit --config configs/paper/mnist/dense.yaml``
with every default (progress bar, decomposition figures, best and last checkpoints, TensorBoard), plus
:class:`EpochClock`, a callback that records when each epoch starts and ends and how long its training
steps and its validation take. The sides alternate run by run (fresh processes); an epoch's time is
from the start of its training to the end of its validation (gmnn: to the next epoch's start, so
its checkpoints, figures and logging count), the first epoch of each run left out; beside it, the
process's CPU time over the same span (``time.process_time``: every thread, the progress bar's and
TensorBoard's writer included), which other jobs on the cores disturb less. ``--lightning`` adds a
third side between the two: the floor's model, loss, optimizer and validation as a bare
``LightningModule`` (no ``self.log``, no callbacks, logger, checkpoints or progress bar) trained by a
Lightning ``Trainer`` on ``MNISTDataModule``, which splits gmnn's overhead into what Lightning's loop and
data loader cost and what gmnn adds. ``--profile`` adds one run under Lightning's ``SimpleProfiler`` and
prints where an epoch's time goes::

    python scripts/bench_overhead.py --data ../shared/data --repeat 5 --epochs 5 --lightning --profile   # --threads 2: both cores
    python scripts/bench_overhead.py --fake-data --repeat 1 --epochs 2     # seconds: random MNIST-shaped files
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gmnn._deferred import install as defer_unused_imports

# run as a script, as the gmnn command: torchmetrics' unused metric domains and Lightning's compiler imports
# load when used (gmnn._deferred); imported as a module, it leaves the importer's imports alone
if __name__ == "__main__":
    defer_unused_imports()

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from gmnn.pl import Callback, LightningModule  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: gitref, also when this file is loaded by path
from gitref import export  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "paper" / "mnist" / "dense.yaml"
CLOCK_ENV = "GMNN_BENCH_CLOCK"
FAKE_SIZES = {"train": 2048 + 512, "test": 512}  # fake data: 2048 training and 512 validation images


# ------------------------------------------------------------------------------------------- the floor
class FloorMoE(nn.Module):
    """The paper's dense MNIST model from gmnn's blocks, no Lightning: ``log softmax(sum_i g_i p_i)`` ``[B, C]``."""

    def __init__(self, num_experts: int = 5, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28),
                 expert_hidden: tuple[int, ...] = (5, 32), gate_hidden: tuple[int, ...] = (128, 32)) -> None:
        from gmnn.nn.mixture.experts import Experts
        from gmnn.nn.mixture.networks import build_network

        super().__init__()
        shape = list(input_shape)
        self.experts = Experts(lambda: build_network("conv", shape, num_classes, list(expert_hidden), 1, "expert"), num_experts)
        self.gate = build_network("conv", shape, num_experts, list(gate_hidden), 1, "gate")

    def forward(self, x: Tensor) -> Tensor:
        from gmnn.nn.functional.combine import class_log_probs, dense_mixture, softmax_of_mixture
        from gmnn.nn.functional.routing import softmax_routing

        both = self.experts.forward_with_gate(self.gate, x)
        if both is None:
            (expert_logits, _), (gate_logits, _) = self.experts(x), self.gate(x)
        else:
            (expert_logits, _), (gate_logits, _) = both
        return softmax_of_mixture(dense_mixture(softmax_routing(gate_logits), class_log_probs(expert_logits)))


def floor_run(data: str, epochs: int, val_size: int) -> dict[str, Any]:
    """Train :class:`FloorMoE` for ``epochs``; per epoch: seconds of training, of validation, in all."""
    from gmnn.cli.process import tune_malloc
    from gmnn.data import MNISTDataModule
    from gmnn.models.optim import adam

    tune_malloc()
    torch.manual_seed(0)
    module = MNISTDataModule(root=data, batch_size=512, val_size=val_size)
    module.setup("fit")
    (x_train, y_train), (x_val, y_val) = module.splits["train"].tensors, module.splits["val"].tensors
    model = FloorMoE()
    optimizer = adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    batch, n = 512, len(x_train)
    rows = []
    for _ in range(epochs):
        start, cpu_start = time.perf_counter(), time.process_time()
        model.train()
        for rows_ in torch.randperm(n).split(batch):
            x, y = x_train.index_select(0, rows_), y_train.index_select(0, rows_)
            loss = nn.functional.nll_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        trained = time.perf_counter()
        model.eval()
        total, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
        with torch.inference_mode():
            for first in range(0, len(x_val), batch):
                x, y = x_val[first:first + batch], y_val[first:first + batch]
                log_probs = model(x)
                total += nn.functional.nll_loss(log_probs, y, reduction="sum")
                correct += (log_probs.argmax(-1) == y).sum()
        end = time.perf_counter()
        rows.append({"train": trained - start, "val": end - trained, "epoch": end - start, "cpu": time.process_time() - cpu_start,
                     "val_loss": float(total) / len(x_val), "val_acc": float(correct) / len(x_val)})
    return {"epochs": rows, "threads": torch.get_num_threads()}


class LightningFloor(LightningModule):
    """:class:`FloorMoE` as a bare ``LightningModule``: the floor's loss, optimizer and validation sums, no logging."""

    def __init__(self) -> None:
        super().__init__()
        self.model = FloorMoE()
        self.val_sums = {"loss": torch.zeros(()), "correct": torch.zeros((), dtype=torch.long)}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return nn.functional.nll_loss(self.model(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        log_probs = self.model(batch[0])
        self.val_sums["loss"] += nn.functional.nll_loss(log_probs, batch[1], reduction="sum")
        self.val_sums["correct"] += (log_probs.argmax(-1) == batch[1]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        from gmnn.models.optim import adam

        return adam(self.parameters(), lr=1e-3, weight_decay=1e-3)


def lightning_run(data: str, epochs: int, val_size: int, clock_path: str) -> None:
    """Train :class:`LightningFloor` with a bare ``Trainer`` on ``MNISTDataModule``, timed by :class:`EpochClock`."""
    from gmnn import pl
    from gmnn.cli.process import tune_malloc
    from gmnn.data import MNISTDataModule

    tune_malloc()
    torch.manual_seed(0)
    os.environ[CLOCK_ENV] = clock_path
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[EpochClock()])
    trainer.fit(LightningFloor(), MNISTDataModule(root=data, batch_size=512, val_size=val_size))


# ------------------------------------------------------------------------------------------- gmnn's side
class EpochClock(Callback):
    """Records, per training epoch, its start and end and the time inside training steps and validation.

    ``end`` is the next epoch's start (or the end of training): what the epoch's hooks, checkpoints and
    figures cost is in it. Written as JSON to the file named by ``$GMNN_BENCH_CLOCK`` when training ends.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.mark = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        if self.rows:
            self.rows[-1].update(end=now, cpu_end=cpu)
        self.rows.append({"start": now, "cpu_start": cpu, "steps": 0.0, "val": 0.0})

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.mark = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.rows[-1]["steps"] += time.perf_counter() - self.mark

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.mark = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.rows and not trainer.sanity_checking:
            self.rows[-1]["val"] += time.perf_counter() - self.mark

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.rows:
            self.rows[-1].update(end=time.perf_counter(), cpu_end=time.process_time())
        path = os.environ.get(CLOCK_ENV)
        if path:
            Path(path).write_text(json.dumps({"epochs": [{"epoch": r["end"] - r["start"], "train": r["steps"], "val": r["val"],
                                                         "cpu": r["cpu_end"] - r["cpu_start"]} for r in self.rows],
                                              "threads": torch.get_num_threads()}))


def gmnn_command(data: str, epochs: int, val_size: int, work: Path, profile: bool) -> list[str]:
    cmd = [sys.executable, "-m", "gmnn.cli", "fit", "--config", str(CONFIG), f"--data.init_args.root={data}",
           f"--data.init_args.val_size={val_size}", f"--trainer.max_epochs={epochs}",
           "--trainer.callbacks+=bench_overhead.EpochClock"]
    if profile:
        cmd += ["--trainer.profiler=SimpleProfiler", f"--trainer.profiler.init_args.dirpath={work}",
                "--trainer.profiler.init_args.filename=profile"]
    return cmd


def run(cmd: list[str], work: Path, env: dict[str, str]) -> None:
    with open(work / "log.txt", "w") as log:
        done = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join((work / "log.txt").read_text().splitlines()[-20:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{tail}")


def gmnn_run(args: argparse.Namespace, work: Path, profile: bool = False, tree: Path = REPO) -> dict[str, Any]:
    """One ``gmnn fit`` process of the gmnn in ``tree`` (this one, or ``--baseline-ref``'s), timed by :class:`EpochClock`."""
    clock = work / "clock.json"
    env = {**os.environ, CLOCK_ENV: str(clock),
           "PYTHONPATH": os.pathsep.join([str(tree), str(REPO / "scripts"), os.environ.get("PYTHONPATH", "")])}
    run(gmnn_command(args.data, args.epochs, args.val_size, work, profile), work, env)
    return json.loads(clock.read_text())


def floor_process(args: argparse.Namespace, work: Path, side: str = "floor") -> dict[str, Any]:
    """One process of the floor (``side="floor"``) or of :class:`LightningFloor` (``"lightning"``)."""
    out = work / f"{side}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run([sys.executable, str(Path(__file__).resolve()), f"--child-{side}", str(out), "--data", args.data,
         "--epochs", str(args.epochs), "--val-size", str(args.val_size)], work, env)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------- data, report
def write_fake_mnist(root: Path) -> None:
    """Random MNIST-format IDX files (``root/MNIST/raw``) of :data:`FAKE_SIZES` images."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, count in (("train", FAKE_SIZES["train"]), ("t10k", FAKE_SIZES["test"])):
        images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (count,), dtype=torch.uint8, generator=generator)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, count, 28, 28) + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count) + labels.numpy().tobytes())


def epoch_medians(run_: dict[str, Any]) -> dict[str, float]:
    """Median seconds of each part over the run's epochs, the first left out when there are others
    (``cpu``, the process's CPU time an epoch, where the run recorded it)."""
    epochs = run_["epochs"][1:] or run_["epochs"]
    return {key: statistics.median(e[key] for e in epochs) for key in PARTS if all(key in e for e in epochs)}


PARTS = ("epoch", "train", "val", "cpu")


def summary(runs: dict[str, list[dict[str, Any]]], batches: tuple[int, int]) -> str:
    """The table of the medians over runs of each run's median epoch, and gmnn's time over the floor's."""
    per_run = {side: [epoch_medians(r) for r in rows] for side, rows in runs.items()}
    medians = {side: {key: statistics.median(r[key] for r in rows) for key in PARTS if all(key in r for r in rows)}
               for side, rows in per_run.items()}
    train_batches, val_batches = batches
    lines = ["| side | epoch s | training steps s | validation s | rest s | ms a training step | epoch CPU s | runs (epoch s) |",
             "|---|---|---|---|---|---|---|---|"]
    for side, m in medians.items():
        each = ", ".join(f"{r['epoch']:.3f}" for r in per_run[side])
        rest = m["epoch"] - m["train"] - m["val"]
        cpu = f"{m['cpu']:.3f}" if "cpu" in m else "-"
        lines.append(f"| {side} | {m['epoch']:.3f} | {m['train']:.3f} | {m['val']:.3f} | {rest:.3f} | "
                     f"{1000 * m['train'] / train_batches:.2f} | {cpu} | {each} |")
    lines.append("")
    for side in [s for s in medians if s != "floor"] if "floor" in medians else []:
        floor, gmnn = medians["floor"], medians[side]
        pairs = ", ".join(f"{g['epoch'] / f['epoch']:.3f}" for f, g in zip(per_run["floor"], per_run[side]))
        lines.append(f"{side} / floor epoch time: {gmnn['epoch'] / floor['epoch']:.3f} (medians; each interleaved pair: {pairs}); "
                     f"training steps {gmnn['train'] / floor['train']:.3f}, validation {gmnn['val'] / floor['val']:.3f}")
        if "cpu" in floor and "cpu" in gmnn:
            pairs = ", ".join(f"{g['cpu'] / f['cpu']:.3f}" for f, g in zip(per_run["floor"], per_run[side]))
            lines.append(f"{side} / floor epoch CPU time: {gmnn['cpu'] / floor['cpu']:.3f} (medians; each interleaved pair: {pairs})")
    for side in [s for s in medians if s.startswith("gmnn")] if "lightning" in medians else []:
        base, gmnn = medians["lightning"], medians[side]
        lines.append(f"{side} / lightning epoch time: {gmnn['epoch'] / base['epoch']:.3f}; training steps "
                     f"{gmnn['train'] / base['train']:.3f}, validation {gmnn['val'] / base['val']:.3f} (what gmnn adds to a bare Trainer)")
    lines.append(f"{train_batches} training and {val_batches} validation batches an epoch")
    return "\n".join(lines)


def profile_table(path: Path, epochs: int, top: int = 18) -> str:
    """The ``SimpleProfiler`` report's actions with the most total time, per epoch."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("Action", "Total") and cells[3].replace(".", "", 1).isdigit():
            rows.append((cells[0], float(cells[1]), int(cells[2]), float(cells[3])))
    rows.sort(key=lambda r: -r[3])
    lines = ["| action | ms a call | calls an epoch | ms an epoch |", "|---|---|---|---|"]
    for name, mean, calls, total in rows[:top]:
        lines.append(f"| {name} | {1000 * mean:.3f} | {calls / epochs:.1f} | {1000 * total / epochs:.1f} |")
    return "\n".join(lines)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--fake-data", action="store_true", help="random MNIST-format files of 2048 + 512 images instead")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side, interleaved (floor, gmnn, floor, ...)")
    parser.add_argument("--val-size", type=int, default=10000, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help="one more gmnn run under SimpleProfiler: where the time goes")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of both sides (OMP_NUM_THREADS); one thread is the least disturbed by other jobs")
    parser.add_argument("--baseline-ref", help="also run gmnn as of this git ref, interleaved (an A/B of a change)")
    parser.add_argument("--lightning", action="store_true", help="add the bare-Lightning side (LightningFloor)")
    parser.add_argument("--json", help="also write every run's epochs to this file")
    parser.add_argument("--child-floor", help=argparse.SUPPRESS)
    parser.add_argument("--child-lightning", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 1 or args.repeat < 1:
        parser.error("--epochs and --repeat must be at least 1")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # the children inherit it
    torch.set_num_threads(args.threads)
    if args.child_floor:
        Path(args.child_floor).write_text(json.dumps(floor_run(args.data, args.epochs, args.val_size)))
        return
    if args.child_lightning:
        lightning_run(args.data, args.epochs, args.val_size, args.child_lightning)
        return
    with tempfile.TemporaryDirectory(prefix="gmnn_overhead_") as tmp:
        if args.fake_data:
            args.data, args.val_size = str(Path(tmp) / "data"), 512
            write_fake_mnist(Path(args.data))
        args.data = str(Path(args.data).resolve())
        train_size = (FAKE_SIZES["train"] if args.fake_data else 60000) - args.val_size
        batches = (-(-train_size // 512), -(-args.val_size // 512))
        before = load()
        baseline = f"gmnn@{args.baseline_ref}" if args.baseline_ref else None
        trees = {"gmnn": REPO, **({baseline: export(args.baseline_ref, Path(tmp) / "baseline")} if baseline else {})}
        runs: dict[str, list[dict[str, Any]]] = {"floor": [], **({"lightning": []} if args.lightning else {}),
                                                 **{side: [] for side in trees}}
        for round_ in range(args.repeat):
            for index, side in enumerate(runs):
                work = Path(tmp) / f"{index}_{round_}"
                work.mkdir()
                runs[side].append(floor_process(args, work, side) if side in ("floor", "lightning")
                                  else gmnn_run(args, work, tree=trees[side]))
        after = load()
        print(f"{args.repeat} interleaved runs of each side, {args.epochs} epochs each; torch threads "
              f"{runs['gmnn'][0]['threads']} (floor {runs['floor'][0]['threads']}), {os.cpu_count()} CPUs; "
              f"load average {before} before, {after} after")
        print(summary(runs, batches))
        if args.profile:
            work = Path(tmp) / "profile"
            work.mkdir()
            gmnn_run(args, work, profile=True)
            report = next(work.glob("*profile*.txt"))
            print(f"\nwhere gmnn's epoch goes (one run under SimpleProfiler, {args.epochs} epochs; sanity check included):")
            print(profile_table(report, args.epochs))
        if args.json:
            Path(args.json).write_text(json.dumps({"load_before": before, "load_after": after, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
