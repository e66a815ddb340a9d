"""Pre-train each expert alone on the samples of its own classes (the reference's "pre-chosen" experts).

The reference (``aaai_2022/notebooks/mnist_classification.ipynb`` of ``yamsgithub/modular_deep_learning``,
"Experiment 2") trains each of 5 experts on the samples of one pair of digits of a split such as
``0,7 1,9 2,4 3,8 5,6`` (softmax cross-entropy over all 10 classes, Adam lr 1e-3), freezes them, and trains
a gate over them; the gate is then reused with new experts (``gmnn.callbacks.GateTransfer``). This script
writes a checkpoint holding only the experts, for ``init_experts_from`` (configs/methods/pair_experts.yaml)::

    python scripts/pretrain_pair_experts.py --config configs/mnist/protocol.yaml \\
        --set data.init_args.root=../shared/data --classes 0,7 1,9 2,4 3,8 5,6 --epochs 20 --out pair_experts.ckpt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The reference's five splits of the ten digits into pairs (the notebook's classes_per_expert_list).
REFERENCE_SPLITS = [
    [[0, 7], [1, 9], [2, 4], [3, 8], [5, 6]],
    [[4, 6], [1, 7], [2, 9], [3, 8], [0, 5]],
    [[4, 7], [0, 6], [3, 8], [1, 2], [5, 9]],
    [[5, 8], [6, 9], [1, 3], [0, 2], [4, 7]],
    [[2, 8], [3, 6], [0, 5], [4, 7], [1, 9]],
]


def labels_of(dataset: Dataset) -> torch.Tensor:
    """Every label of ``dataset`` (``targets`` when it has them, else read sample by sample)."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def pretrain_experts(
    experts: torch.nn.Module,
    dataset: Dataset,
    classes: Sequence[Sequence[int]],
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 512,
) -> list[float]:
    """Train expert ``i`` (of a :class:`gmnn.nn.Experts`) alone on the samples whose label is in ``classes[i]``.

    Each expert keeps its full output layer (cross-entropy over every class), as in the reference.

    Returns:
        Each expert's training accuracy on its own samples after the last epoch.

    Raises:
        ValueError: ``classes`` does not give one non-empty class list per expert, or a list has no samples.
    """
    count = len(experts.experts)
    if len(classes) != count or any(len(c) == 0 for c in classes):
        raise ValueError(f"classes must give one non-empty class list per expert ({count}), got {classes}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    labels = labels_of(dataset)
    accuracies = []
    for index, kept in enumerate(classes):
        rows = torch.isin(labels, torch.tensor(list(kept))).nonzero().flatten().tolist()
        if not rows:
            raise ValueError(f"classes[{index}]={list(kept)} has no samples in the dataset")
        loader = DataLoader(Subset(dataset, rows), batch_size=batch_size, shuffle=True)
        params = list(experts.experts[index].parameters())
        optimizer = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            correct = 0
            for x, y in loader:
                logits, _ = experts.forward_expert(index, x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                correct += int((logits.argmax(-1) == y).sum())
        accuracies.append(correct / len(rows))
    return accuracies


def save_experts(experts: torch.nn.Module, path: str | Path) -> None:
    """A checkpoint holding only ``experts.*`` weights, readable by ``init_experts_from``."""
    state = {f"experts.{name}": value.detach().clone() for name, value in experts.state_dict().items()}
    torch.save({"state_dict": state}, path)


def parse_classes(items: Sequence[str]) -> list[list[int]]:
    """``["0,7", "1,9"]`` -> ``[[0, 7], [1, 9]]``."""
    try:
        return [[int(c) for c in item.split(",")] for item in items]
    except ValueError:
        raise ValueError(f"classes must be comma-separated class numbers per expert, e.g. 0,7 1,9; got {items}") from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, action="append",
                        help="gmnn config whose model and data to use (repeat it: a protocol, then a method fragment)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--classes", nargs="+", help="each expert's classes, e.g. 0,7 1,9 2,4 3,8 5,6")
    parser.add_argument("--split", type=int, choices=range(len(REFERENCE_SPLITS)), help="one of the reference's 5 splits")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", required=True, help="checkpoint to write")
    options = parser.parse_args(argv)
    if (options.classes is None) == (options.split is None):
        raise ValueError("give exactly one of --classes and --split")
    classes = REFERENCE_SPLITS[options.split] if options.split is not None else parse_classes(options.classes)

    from gmnn.cli import make_cli

    configs = [arg for path in options.config for arg in ("--config", path)]
    cli = make_cli([*configs, *[f"--{s}" for s in options.set], "--trainer.logger=false"], run=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    dataset = cli.datamodule.train_dataloader().dataset
    accuracies = pretrain_experts(cli.model.experts, dataset, classes, options.epochs, options.lr, options.batch_size)
    save_experts(cli.model.experts, options.out)
    for kept, accuracy in zip(classes, accuracies):
        print(f"expert on classes {kept}: training accuracy {accuracy:.3f}")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
