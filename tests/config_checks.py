"""What a shipped config's short run must show: the model the YAML asks for, its metrics, and a descending loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
import yaml

from gmnn.models import MoEModule, RegressionMoE

# Add to a CLI run with "--trainer.callbacks+=tests.config_checks.FirstStep".
FIRST_STEP = "--trainer.callbacks+=tests.config_checks.FirstStep"


class FirstStep(L.Callback):
    """Keeps the first training batch and the model's state just before and just after the first training step
    (after any callback such as InitSearch has chosen the starting point)."""

    def __init__(self) -> None:
        self.batch: Any = None
        self.before: dict[str, torch.Tensor] | None = None
        self.after: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.before is None:
            self.batch = [t.clone() for t in batch]
            self.before = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.after is None:
            self.after = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def training_loss(model: MoEModule, x: torch.Tensor, y: torch.Tensor) -> float:
    """The loss a training step minimises on ``(x, y)`` (every term, regularizers included), same random draws."""
    model.train()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        if not model.automatic_optimization:  # DualTemperatureMoE: the experts' loss and the gate's
            expert_loss, gate_terms, _ = model.dual_losses(x, y)
            return float(expert_loss + sum(gate_terms.values()))
        return float(torch.stack(list(model.loss_terms(model(x), x, y).values())).sum())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def composed_model(configs: Path | Sequence[Path]) -> dict[str, Any]:
    """The ``model`` section that ``--config A --config B ...`` should give, merged here by hand: the last
    ``class_path``, and every file's ``init_args`` in order (a later file's value wins), so that a method
    fragment keeps the protocol's architecture and optimizer."""
    spec: dict[str, Any] = {"init_args": {}}
    for path in [configs] if isinstance(configs, Path) else configs:
        model = yaml.safe_load(path.read_text()).get("model") or {}
        spec["class_path"] = model.get("class_path", spec.get("class_path"))
        spec["init_args"].update(model.get("init_args") or {})
    return spec


def check_run(cli: Any, configs: Path | Sequence[Path], overridden: tuple[str, ...] = ()) -> None:
    """Assert that ``cli`` (a finished ``fit``) built what ``configs`` (one file, or a protocol and its method
    fragment) say, logged its metrics, and descended."""
    spec = composed_model(configs)
    model: MoEModule = cli.model
    assert f"{type(model).__module__.rsplit('.', 1)[0]}.{type(model).__name__}" == spec["class_path"]
    init_args = spec["init_args"]
    if type(model).__name__ == "SingleModel":
        overridden = (*overridden, "num_experts")  # always 1: a protocol's num_experts is not used
    for key, value in init_args.items():
        if key not in overridden:
            assert _same(model.hparams[key], value), f"{key}: built {model.hparams[key]!r}, config {value!r}"
    if type(model).__name__ != "SingleModel":
        assert model.num_experts == init_args.get("num_experts", 4) == len(model.experts.experts)
    assert model.regularizer_weights == (init_args.get("regularizers") or {})

    metrics = cli.trainer.callback_metrics
    task = "mse" if isinstance(model, RegressionMoE) else "acc"
    names = {"train/loss", f"train/{task}", "val/loss", f"val/{task}", "train/temperature",
             *(f"train/reg/{name}" for name in model.regularizer_weights)}
    if not isinstance(model, RegressionMoE):
        names |= {f"val/{m}" for m in ("mutual_information", "sample_entropy", "expert_usage", "per_task_entropy")}
    assert names <= set(metrics), f"not logged: {sorted(names - set(metrics))}"
    assert all(math.isfinite(float(metrics[name])) for name in names), {n: float(metrics[n]) for n in names}

    (first,) = [c for c in cli.trainer.callbacks if isinstance(c, FirstStep)]
    assert first.after is not None, "no training step ran"
    x, y = first.batch[0], first.batch[1]
    hparams = {k: v for k, v in model.hparams.items() if not k.startswith("_")}  # the CLI adds _class_path
    if "init_experts_from" in hparams:
        hparams["init_experts_from"] = None  # the experts come from the state below
    probe = type(model)(**hparams)  # a model without a Trainer: nothing is logged
    probe.load_state_dict(first.after)
    after = training_loss(probe, x, y)
    probe.load_state_dict(first.before)
    before = training_loss(probe, x, y)
    assert after < before, f"one optimizer step did not lower the loss of its batch: {before} -> {after}"


def fit_on_fake_mnist(config: Path, tmp_path: Path) -> Any:
    """Two steps of ``gmnn fit --config config`` on small fake MNIST files, the first step recorded; the CLI, checked."""
    from gmnn.cli import make_cli
    from tests.data.fake_files import write_idx

    write_idx(tmp_path, "MNIST", train=40, test=12)
    cli = make_cli(
        ["fit", "--config", str(config), f"--data.init_args.root={tmp_path}", "--data.init_args.val_size=8",
         "--data.init_args.batch_size=8", "--trainer.fast_dev_run=2", f"--trainer.default_root_dir={tmp_path}",
         FIRST_STEP]
    )
    check_run(cli, config)
    return cli
