"""Exploration helper behind scripts/mnist_protocol_notes.md: fit one MNIST config, test it, print one line.

Prints ``RESULT {...}`` with the test error of the final weights, the fit wall
time and the mutual information I(E;Y) in bits, computed here ad hoc (argmax
of the gate vs the chosen expert's predicted class, on the test set) until
the metrics of gmnn.metrics are available. Exploration-only init tweaks,
not part of gmnn: ``GATE_ZERO=1`` zeroes the gate's output layer,
``GATE_FREEZE_EPOCHS=n`` keeps the gate fixed for the first n epochs.

    OMP_NUM_THREADS=1 python scripts/explore_mnist.py --data.init_args.root=../shared/data --trainer.max_epochs=10
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gmnn.cli import make_cli  # noqa: E402


class FreezeGate(L.Callback):
    """Keep the gate's parameters fixed during the first ``epochs`` epochs."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for parameter in pl_module.gate.parameters():
            parameter.requires_grad_(trainer.current_epoch >= self.epochs)


def mutual_information(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> tuple[float, list[float]]:
    """I(E;Y) in bits between argmax expert and its predicted class, and the share of samples per expert."""
    counts = torch.zeros(model.num_experts, model.num_classes)
    with torch.no_grad():
        for x, _ in loader:
            out = model(x)
            expert, label = out.chosen_expert, out.chosen_expert_log_probs().argmax(-1)
            counts.index_put_((expert, label), torch.ones(len(expert)), accumulate=True)
    joint = counts / counts.sum()
    p_expert, p_class = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    mi = (joint * (joint / (p_expert * p_class)).log2()).nan_to_num().sum().item()
    return mi, p_expert.flatten().tolist()


def main(args: list[str]) -> None:
    start = time.time()
    cli = make_cli(["--config", "configs/mnist/protocol.yaml", "--trainer.enable_progress_bar=false",
                    "--trainer.enable_model_summary=false", *args], run=False)
    if os.environ.get("GATE_ZERO") == "1":
        torch.nn.init.zeros_(cli.model.gate.mlp.head.weight)
        torch.nn.init.zeros_(cli.model.gate.mlp.head.bias)
    if int(os.environ.get("GATE_FREEZE_EPOCHS", "0")):
        cli.trainer.callbacks.append(FreezeGate(int(os.environ["GATE_FREEZE_EPOCHS"])))
    cli.trainer.fit(cli.model, cli.datamodule)
    fit_s = time.time() - start
    result = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    mi, usage = mutual_information(cli.model.eval(), cli.datamodule.test_dataloader())
    env = {k: v for k, v in os.environ.items() if k.startswith("GATE_")}
    print("RESULT", json.dumps({"args": args, "env": env, "test_error": 1 - result["test/acc"], "mi": mi,
                                "fit_s": round(fit_s), "usage": usage}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
