"""Cost of the decomposition metrics and figures as a fraction of an MNIST training epoch.

The paper's MNIST set-up: 5 conv experts and a conv gate, batch 512, 50k/10k
train/val split. Measures, on the CPU (or --device):

* the time of ``--train-batches`` training batches (forward, backward, Adam),
  scaled to a 50k-sample epoch;
* the time of the metric updates (``DecompositionMetrics.update_from`` and
  ``ExpertAllocation.update``, including the chosen expert's prediction) over
  the 10k validation samples, plus ``compute()``;
* the time of the figures callback for one validation epoch (decomposition figure, gate histograms).

Run (about a minute on one core):
    OMP_NUM_THREADS=1 python scripts/bench_metrics_overhead.py --train-batches 10
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pytorch_lightning as L
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.datasets import MNIST

from gmnn.callbacks import DecompositionFigures
from gmnn.models import DenseMoE


def load_mnist(root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST training images ``[60000, 1, 28, 28]`` normalised as in the paper, and labels."""
    data = MNIST(root=root, train=True, download=False)
    images = (data.data.float().div(255).sub(0.1307).div(0.3081)).unsqueeze(1)
    return images, data.targets


def timed(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="/work/shared/data")
    parser.add_argument("--train-batches", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    options = parser.parse_args()
    torch.manual_seed(0)
    images, labels = load_mnist(options.root)
    order = torch.randperm(len(images))
    train_idx, val_idx = order[:50_000], order[50_000:]
    device = torch.device(options.device)
    model = DenseMoE(
        input_shape=[1, 28, 28], num_classes=10, num_experts=5, expert="conv", expert_hidden=[5, 32],
        gate="conv", gate_hidden=[128, 32], weight_decay=1e-3,
    ).to(device)
    optimizer = model.configure_optimizers()
    bs = options.batch_size

    def train_batch(i: int) -> None:
        idx = train_idx[i * bs:(i + 1) * bs]
        x, y = images[idx].to(device), labels[idx].to(device)
        loss = torch.nn.functional.nll_loss(model(x).log_probs, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train_batch(0)  # warm-up
    start = time.perf_counter()
    for i in range(1, options.train_batches + 1):
        train_batch(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_batch = (time.perf_counter() - start) / options.train_batches
    epoch = per_batch * 50_000 / bs

    model.eval()
    with torch.no_grad():
        outputs = [(model(images[val_idx[i:i + bs]].to(device)), labels[val_idx[i:i + bs]].to(device)) for i in range(0, 10_000, bs)]

    def update_metrics() -> None:
        for stage in ("val",):
            model.decomposition[stage].reset()
            model.allocation[stage].reset()
            for out, y in outputs:
                predictions = out.chosen_expert_log_probs().argmax(-1)
                model.decomposition[stage].update_from(out.gate_probs, y, predictions)
                model.allocation[stage].update(out.gate_probs, y, predictions)
            model.decomposition[stage].compute()
            model.allocation[stage].compute()
        if device.type == "cuda":
            torch.cuda.synchronize()

    update_metrics()
    metrics_time = timed(update_metrics, repeats=3)
    with tempfile.TemporaryDirectory() as logdir:
        trainer = L.Trainer(logger=TensorBoardLogger(logdir), accelerator="cpu" if device.type == "cpu" else "auto",
                            enable_progress_bar=False, enable_model_summary=False)
        callback = DecompositionFigures()
        callback._write(trainer, model, "val")  # warm-up (matplotlib imports, font cache)
        figures_time = timed(lambda: callback._write(trainer, model, "val"), repeats=3)
        trainer.logger.experiment.close()
    total = metrics_time + figures_time
    print(f"threads={torch.get_num_threads()} device={device} batch={bs}")
    print(f"train batch: {per_batch * 1000:.1f} ms -> 50k-sample epoch: {epoch:.1f} s")
    print(f"metric updates + compute over 10k val samples: {metrics_time * 1000:.1f} ms ({100 * metrics_time / epoch:.3f}% of the epoch)")
    print(f"figures callback (one validation epoch): {figures_time * 1000:.1f} ms ({100 * figures_time / epoch:.3f}% of the epoch)")
    print(f"overhead: {100 * total / epoch:.2f}% of a training epoch")


if __name__ == "__main__":
    main()
