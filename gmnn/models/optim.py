"""The optimizer and learning-rate schedules of every gmnn model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, get_args

import torch
from torch import nn

from gmnn.validation import check_choice, check_non_negative, check_positive

Scheduler = Literal["none", "cosine", "onecycle"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)


def check_optimizer_args(lr: float, weight_decay: float, scheduler: str) -> None:
    """Raise ``ValueError`` for ``lr <= 0``, ``weight_decay < 0`` or an unknown ``scheduler``."""
    check_positive("lr", lr)
    check_non_negative("weight_decay", weight_decay)
    check_choice("scheduler", scheduler, SCHEDULERS)


def adam(params: Iterable[nn.Parameter], lr: float, weight_decay: float, decoupled: bool = False) -> torch.optim.Adam:
    """Adam (decoupled weight decay = AdamW when ``decoupled``), with PyTorch's fused kernel where the parameters allow it."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=decoupled, fused=fused or None)


def with_schedule(optimizer: torch.optim.Optimizer, schedule: str, lr: float, steps: int) -> Any:
    """``optimizer`` with a per-step schedule, as ``configure_optimizers`` returns it.

    Args:
        optimizer: The optimizer.
        schedule: ``"none"`` (constant lr), ``"cosine"`` (cosine decay to 0) or ``"onecycle"``
            (warm-up to ``lr`` over 30% of the steps, then cosine decay).
        lr: Peak learning rate of ``"onecycle"``.
        steps: Total training steps.
    """
    if schedule == "none":
        return optimizer
    steps = max(1, int(steps))
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.3)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class AdamOptimizer:
    """``configure_optimizers`` of a LightningModule whose hyperparameters hold ``lr``, ``weight_decay``,
    ``decoupled_weight_decay`` and ``scheduler``: Adam on the trainable parameters with the per-step schedule."""

    hparams: Any

    def make_adam(self, params: Iterable[nn.Parameter]) -> torch.optim.Adam:
        """Adam with ``lr``, ``weight_decay`` and ``decoupled_weight_decay`` (:func:`adam`)."""
        hp = self.hparams
        return adam(params, hp.lr, hp.weight_decay, bool(hp.get("decoupled_weight_decay", False)))

    def configure_optimizers(self) -> Any:
        """Adam on the trainable parameters, plus the per-step ``scheduler``."""
        optimizer = self.make_adam(p for p in self.parameters() if p.requires_grad)  # type: ignore[attr-defined]
        schedule = self.hparams.get("scheduler", "none")
        steps = self.trainer.estimated_stepping_batches if schedule != "none" else 1  # type: ignore[attr-defined]
        return with_schedule(optimizer, schedule, self.hparams.lr, steps)
