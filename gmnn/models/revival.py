"""Reviving dead experts by splitting the busiest one.

An expert that the gate stops choosing early in training gets almost no
gradient and never recovers ("dead expert"). At the end of an early epoch,
:class:`ExpertRevival` replaces each expert whose mean gate probability fell
below a threshold by a copy of the busiest expert (parameters and Adam
state, with small multiplicative noise), and halves the gate mass of the
pair: both get the busiest expert's gate row, offset in opposite random
directions, and its bias minus log 2. Without the offsets the mixture
computes the same function right after the split; the offsets make the two
copies divide the busiest expert's inputs between them along a random
direction, as the split step of split-and-merge EM (Ueda et al., 2000).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gmnn import pl
from gmnn.nn.mixture.experts import Experts


class ExpertRevival:
    """Accumulates the gate's mean probability per expert over an epoch and splits experts.

    Args:
        threshold: Revive experts whose mean gate probability is below this (0 < threshold < 1 / E).
        noise: Std of the multiplicative noise on the copied parameters.
        gate_noise: Relative offset of the pair's gate rows (see :func:`split_expert`).
    """

    def __init__(self, threshold: float, noise: float = 0.05, gate_noise: float = 0.5) -> None:
        self.threshold, self.noise, self.gate_noise = threshold, noise, gate_noise
        self.usage: Tensor | None = None
        self.count = 0
        self.epoch_usage: Tensor | None = None  # the finished epoch's mean usage over all processes

    def record(self, gate_probs: Tensor) -> None:
        """Add a batch of gate probabilities ``[B, E]`` (stays on the device)."""
        total = gate_probs.detach().sum(dim=0)
        self.usage = total if self.usage is None else self.usage + total
        self.count += gate_probs.shape[0]

    def mean_usage(self) -> Tensor | None:
        """Mean gate probability per expert since the last :meth:`reset`, or ``None``."""
        return None if self.usage is None or self.count == 0 else self.usage / self.count

    def reset(self) -> None:
        self.usage, self.count = None, 0

    def finish_epoch(self, trainer: Any | None, usage: Tensor | None = None) -> None:
        """Average this epoch's usage (``usage``, else the recorded one) over all processes (a
        collective: call it in the epoch's last training batch, which every process runs in
        lockstep) and keep it for :meth:`revive`."""
        usage = self.mean_usage() if usage is None else usage.float()
        if usage is not None and trainer is not None and trainer.world_size > 1:
            usage = trainer.strategy.reduce(usage, reduce_op="mean")
        self.epoch_usage = usage
        self.reset()

    def revive(self, module: Any) -> list[tuple[int, int]]:
        """Split experts of ``module`` (a :class:`~gmnn.models.MoEModule`) by the usage of the epoch.

        Uses the usage that :meth:`finish_epoch` averaged over the processes (no collective here,
        so it is safe in an epoch-end hook); outside a Trainer, the usage recorded so far.
        Returns the ``(busiest, dead)`` pairs; logs their number as ``train/revived_experts``.
        """
        if self.epoch_usage is None and module._trainer is None:
            self.finish_epoch(None)
        usage, self.epoch_usage = self.epoch_usage, None
        if usage is None:
            return []
        trainer = module._trainer
        pairs = self.plan(usage)
        optimizers = module.optimizers() if trainer is not None else []
        optimizers = [o.optimizer for o in (optimizers if isinstance(optimizers, list) else [optimizers])]
        generator = torch.Generator().manual_seed(module.current_epoch)  # the same on every process
        for source, target in pairs:
            split_expert(module.experts, source, target, module.expert_logit_layer(), optimizers, self.noise, generator,
                         self.gate_noise)
        if trainer is not None:
            module.log("train/revived_experts", float(len(pairs)), on_step=False, on_epoch=True, batch_size=1)
        return pairs

    def plan(self, usage: Tensor) -> list[tuple[int, int]]:
        """``(busiest, dead)`` pairs to split, each dead expert once, halving the busiest's usage each time."""
        usage = usage.detach().double().cpu().clone()
        pairs = []
        for dead in torch.nonzero(usage < self.threshold).flatten().tolist():
            busiest = int(usage.argmax())
            if busiest == dead or usage[busiest] < 2 * self.threshold:
                break
            usage[busiest] /= 2
            usage[dead] = usage[busiest]
            pairs.append((busiest, dead))
        return pairs


def output_layer(network: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of ``network`` (its output layer).

    Raises:
        ValueError: ``network`` has no ``nn.Linear``.
    """
    layers = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"the gate has no linear output layer: {type(network).__name__}")
    return layers[-1]


@torch.no_grad()
def split_expert(
    experts: Experts, source: int, target: int, gate_head: nn.Linear | None,
    optimizers: Sequence[torch.optim.Optimizer], noise: float, generator: torch.Generator, gate_noise: float = 0.0,
) -> None:
    """Make expert ``target`` a noisy copy of expert ``source`` and split their gate mass.

    Args:
        experts: The experts.
        source: The busiest expert.
        target: The dead expert, overwritten.
        gate_head: The gate's output layer (row e scores expert e), or ``None`` to leave the gate alone.
        optimizers: Optimizers whose state of ``source``'s parameters is copied to ``target``'s.
        noise: Std of the multiplicative Gaussian noise on the copied parameters (0: exact copy).
        generator: Random generator of the noise.
        gate_noise: Length of ``±offset`` added to the two gate rows, relative to the row's norm: the
            pair then splits ``source``'s inputs along a random direction of the gate's hidden layer
            (0: identical rows, the split is left to the noise on the experts).
    """
    for src, dst in zip(experts[source].parameters(), experts[target].parameters()):
        scale = 1 + noise * torch.randn(src.shape, generator=generator).to(src)
        dst.copy_(src * scale)
        for optimizer in optimizers:
            if src in optimizer.state:
                optimizer.state[dst] = {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[src].items()}
    if gate_head is not None:
        row = gate_head.weight[source].clone()
        direction = torch.randn(row.shape, generator=generator).to(row)
        offset = gate_noise * row.norm() * direction / direction.norm().clamp_min(1e-12)
        gate_head.weight[source] = row - offset
        gate_head.weight[target] = row + offset
        if gate_head.bias is not None:
            gate_head.bias[source] -= math.log(2)
            gate_head.bias[target] = gate_head.bias[source]


def revival_of(num_experts: int, threshold: float, epochs: int) -> ExpertRevival | None:
    """An :class:`ExpertRevival` for ``revive_below=threshold``, or ``None`` when it is 0.

    Raises:
        ValueError: ``threshold`` is outside ``[0, 1 / num_experts)`` or ``epochs`` is not an integer >= 0.
    """
    if not 0 <= threshold < 1 / num_experts:
        raise ValueError(f"revive_below must be in [0, 1 / num_experts = {1 / num_experts:.4g}), got {threshold}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"revive_epochs must be an integer >= 0, got {epochs!r}")
    return ExpertRevival(threshold) if threshold > 0 else None


class ReviveDeadExperts(pl.Callback):
    """After each of the first ``epochs`` training epochs, revive the experts whose mean gate
    probability over the epoch fell below ``below``: each becomes a noisy copy of the busiest
    expert (parameters and Adam state) and takes half of its gate mass (the split step of
    split-and-merge EM, Ueda et al., 2000; :mod:`gmnn.models.revival`). Logs the number
    revived as ``train/revived_experts``.

    The model option ``revive_below`` adds this callback (``configure_callbacks``); add it
    yourself to revive with other settings. The usage is the model's epoch mean of its gate
    probabilities, averaged over the processes in the epoch's last training batch (where every
    process is in lockstep), so the epoch-end split runs no collective.

    Args:
        below: Threshold in ``(0, 1 / num_experts)``.
        epochs: Number of first epochs after which dead experts are revived (>= 0).
        noise: Std of the multiplicative noise on the copied parameters.
        gate_noise: Relative offset of the pair's gate rows.
    """

    def __init__(self, below: float, epochs: int = 5, noise: float = 0.05, gate_noise: float = 0.5) -> None:
        if not 0 < below < 1:  # the bound 1 / num_experts is checked in setup, where the model is known
            raise ValueError(f"below must be in (0, 1 / num_experts), got {below}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
        self.below, self.epochs = below, epochs
        self.revival = ExpertRevival(below, noise, gate_noise)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        revival_of(pl_module.num_experts, self.below, self.epochs)

    def _reviving(self, pl_module: pl.LightningModule) -> bool:
        return pl_module.current_epoch < self.epochs

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._reviving(pl_module) and pl_module.is_last_training_batch():
            self.revival.finish_epoch(trainer, pl_module.train_gate_mean.mean())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._reviving(pl_module):
            self.revival.revive(pl_module)
