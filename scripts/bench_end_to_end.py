"""End to end: ``gmnn fit`` beside the reference implementation's own training loop.

Both sides train the paper's dense MNIST model (5 conv experts, conv gate, batch 512, Adam lr 1e-3
with L2 weight decay 1e-3, constant lr) for the same number of epochs on the same 50k/10k split of
the MNIST training set, validating every epoch. Each side runs as its own process and is timed from
process start to exit, so start-up, data loading, validation, metrics, figures, logging and
checkpoints all count. gmnn runs with every default callback on (progress bar, figures, checkpoints,
model summary, TensorBoard).

The reference side needs a checkout of ``yamsgithub/modular_deep_learning``: its
``moe_expectation_model.train`` loop, loss and optimizer wrapper are imported from there unchanged;
only the expert and gate networks (defined inside its MNIST script, which runs every experiment at
import) are described again here, layer for layer, and its loaders are built as that script builds
them (``torchvision.datasets.MNIST`` with ``ToTensor`` + ``Normalize``). Its one unused import,
``sklearn.metrics.confusion_matrix``, is stubbed when scikit-learn is absent.

Usage::

    git clone https://github.com/yamsgithub/modular_deep_learning /tmp/reference
    python scripts/bench_end_to_end.py --reference-repo /tmp/reference --data ../shared/data
    python scripts/bench_end_to_end.py --reference-repo /tmp/reference --repeat 3   # medians of 3 interleaved runs
    python scripts/bench_end_to_end.py --only gmnn --profile      # where gmnn's time goes
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

TRAIN_SAMPLES = 50_000

GMNN_CONFIG = """\
seed_everything: 0
trainer:
  max_epochs: {epochs}
  default_root_dir: {root}
  logger:
    class_path: pytorch_lightning.loggers.TensorBoardLogger
    init_args:
      save_dir: {root}
      name: bench
model:
  class_path: gmnn.models.DenseMoE
  init_args:
    num_experts: 5
    expert: conv
    expert_hidden: [5, 32]
    gate: conv
    gate_hidden: [128, 32]
    lr: 0.001
    weight_decay: 0.001
data:
  class_path: gmnn.data.MNISTDataModule
  init_args:
    root: {data}
    batch_size: 512
"""

# The reference's MNIST networks (aaai_2022/src/mnist/mnist_original_moe_training.py), described
# layer for layer; its model, loss, optimizer wrapper and training loop are imported unchanged.
REFERENCE_DRIVER = """\
import importlib.machinery, sys, types
sys.path.insert(0, {repo!r})
try:
    import sklearn.metrics  # noqa: F401  (imported, never used, by the reference's base class)
except ImportError:
    stub = types.ModuleType("sklearn"); stub.metrics = types.ModuleType("sklearn.metrics")
    stub.metrics.confusion_matrix = None
    for module in (stub, stub.metrics):
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    sys.modules["sklearn"] = stub; sys.modules["sklearn.metrics"] = stub.metrics
import torch, torchvision
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as transforms
from moe_models.moe_expectation_model import moe_expectation_model
from moe_models.moe_models_base import default_optimizer
from helper.moe_models import cross_entropy_loss

class Expert(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3); self.mp = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(169, 5); self.fc2 = nn.Linear(5, 32); self.out = nn.Linear(32, 10)
    def forward(self, t):
        t = self.mp(F.relu(self.conv1(t))).reshape(-1, 169)
        self.hidden = F.relu(self.fc2(F.relu(self.fc1(t))))
        return F.softmax(self.out(self.hidden), dim=1)

class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 3); self.mp = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(169, 128); self.fc2 = nn.Linear(128, 32); self.out = nn.Linear(32, 5)
    def forward(self, t, T=1.0, y=None):
        t = self.mp(F.relu(self.conv1(t))).reshape(-1, 169)
        return F.softmax(self.out(F.relu(self.fc2(F.relu(self.fc1(t))))) / T, dim=1)

transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
full = torchvision.datasets.MNIST({data!r}, train=True, download=False, transform=transform,
                                  target_transform=torch.tensor)
torch.manual_seed(0)
train_set, val_set = torch.utils.data.random_split(full, [50000, 10000])
trainloader = torch.utils.data.DataLoader(train_set, batch_size=512, shuffle=True)
valloader = torch.utils.data.DataLoader(val_set, batch_size=512, shuffle=True)
model = moe_expectation_model(num_experts=5, num_classes=10,
                              experts=nn.ModuleList(Expert() for _ in range(5)), gate=Gate())
optimizer = default_optimizer(optimizer_moe=torch.optim.Adam(model.parameters(), lr=1e-3,
                                                             weight_decay=1e-3))
accuracy = lambda out, yb, mean=True: (out.argmax(1) == yb).float().mean()
model.train(trainloader, valloader, cross_entropy_loss(), optimizer, accuracy=accuracy,
            epochs={epochs}, T=[1.0] * {epochs})
"""


def timed(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` to completion and return its wall time in seconds (raises if it fails)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{tail}")
    return seconds


def run_gmnn(args: argparse.Namespace, work: Path, env: dict[str, str]) -> float:
    config = work / "gmnn.yaml"
    config.write_text(GMNN_CONFIG.format(epochs=args.epochs, root=work / "runs", data=args.data))
    profile = ["-m", "cProfile", "-o", str(work / "gmnn.prof")] if args.profile else []
    cmd = [sys.executable, *profile, "-m", "gmnn.cli", "fit", "--config", str(config)]
    seconds = timed(cmd, env, work / "gmnn.log")
    if args.profile:
        import pstats

        pstats.Stats(str(work / "gmnn.prof")).sort_stats("cumulative").print_stats(45)
    return seconds


def run_reference(args: argparse.Namespace, work: Path, env: dict[str, str]) -> float:
    repo = Path(args.reference_repo).resolve()
    if not (repo / "moe_models" / "moe_expectation_model.py").is_file():
        raise SystemExit(f"--reference-repo {repo}: not a checkout of yamsgithub/modular_deep_learning")
    driver = work / "reference_driver.py"
    driver.write_text(REFERENCE_DRIVER.format(repo=str(repo), data=args.data, epochs=args.epochs))
    return timed([sys.executable, str(driver)], env, work / "reference.log")


def summary(rows: dict[str, list[float]], epochs: int) -> str:
    """The table of the runs: each side's times, its median, and the ratio of the medians (and of each pair)."""
    samples = TRAIN_SAMPLES * epochs
    lines = [f"{epochs} epochs of {TRAIN_SAMPLES} samples, wall time from process start to exit"]
    for name, times in rows.items():
        middle = statistics.median(times)
        each = ", ".join(f"{t:.1f}" for t in times)
        lines.append(f"  {name:<10} median {middle:7.1f} s   {samples / middle:8.0f} samples/s   (runs: {each} s)")
    if len(rows) == 2:
        gmnn, reference = rows["gmnn"], rows["reference"]
        pairs = ", ".join(f"{r / g:.2f}x" for g, r in zip(gmnn, reference))
        lines.append(f"  gmnn / reference speed: {statistics.median(reference) / statistics.median(gmnn):.2f}x"
                     f" (medians; each interleaved pair: {pairs})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-repo", help="checkout of yamsgithub/modular_deep_learning")
    parser.add_argument("--data", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side, interleaved (gmnn, reference, gmnn, ...)")
    parser.add_argument("--only", choices=["gmnn", "reference"])
    parser.add_argument("--profile", action="store_true", help="cProfile the gmnn run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.only != "gmnn" and not args.reference_repo:
        parser.error("--reference-repo is required unless --only gmnn")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    args.data = str(Path(args.data).resolve())
    env = dict(os.environ)
    sides = [name for name in ("gmnn", "reference") if args.only in (None, name)]
    rows: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="gmnn_e2e_") as tmp:
        for round_ in range(args.repeat):
            for name in sides:
                work = Path(tmp) / f"{name}_{round_}"
                work.mkdir()
                rows[name].append((run_gmnn if name == "gmnn" else run_reference)(args, work, env))
    print("\n" + summary(rows, args.epochs))
    if args.json:
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "seconds": rows}, indent=1))


if __name__ == "__main__":
    main()
