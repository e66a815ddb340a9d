"""Train the gate alone first, then the experts as well (the reference's split training of reused experts)."""

from __future__ import annotations

from torch.optim import Optimizer

from gmnn import pl
from gmnn.pl import BaseFinetuning
from gmnn.validation import check_positive_int


class UnfreezeExperts(BaseFinetuning):
    """Keep the experts fixed for the first epochs, then train them with the gate.

    The reference fits a new gate to reused experts with ``split_training``
    (``aaai_2022/src/moe_no_gate_training.py`` lines 205-226 of
    ``yamsgithub/modular_deep_learning``): ``int(epochs / 2)`` epochs with the
    experts frozen and Adam on the gate, then the experts unfrozen and a *new*
    Adam on every parameter for the other half. This callback does that on
    Lightning's :class:`~pytorch_lightning.callbacks.BaseFinetuning`: the experts
    are frozen before the optimizers are built, and at epoch ``epoch`` they join
    the optimizer as a new parameter group at the first group's learning rate;
    with ``reset_optimizer_state`` the optimizer's moments and step counts start
    again then, as a new Adam would. The unfreezing survives a resume.
    Combine with ``init_experts_from`` to reuse trained experts.

    Args:
        epoch: First epoch in which the experts train (``None``: half of ``max_epochs``, rounded down).
        reset_optimizer_state: Clear the optimizer's state when the experts join (the reference's new Adam).

    Raises:
        ValueError: ``epoch`` is not a positive integer, or is ``None`` without ``max_epochs``; or a
            learning-rate schedule runs (the new parameter group would not follow it).
    """

    def __init__(self, epoch: int | None = None, reset_optimizer_state: bool = True) -> None:
        super().__init__()
        if epoch is not None:
            check_positive_int("epoch", epoch)
        self.epoch = epoch
        self.reset_optimizer_state = reset_optimizer_state
        self.unfreeze_epoch: int | None = epoch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.epoch is None:
            if trainer.max_epochs is None or trainer.max_epochs < 2:
                raise ValueError("UnfreezeExperts: set epoch, or max_epochs >= 2 for its default of half the epochs")
            self.unfreeze_epoch = trainer.max_epochs // 2
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.lr_scheduler_configs:
            raise ValueError("UnfreezeExperts: a learning-rate schedule runs; the experts' new parameter group would "
                             "not follow it (use scheduler: none)")
        super().on_fit_start(trainer, pl_module)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.experts, train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        assert self.unfreeze_epoch is not None
        if epoch < self.unfreeze_epoch or all(p.requires_grad for p in pl_module.experts.parameters()):
            return
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if all(id(p) in in_optimizer for p in pl_module.experts.parameters()):
            self.make_trainable(pl_module.experts)  # resumed: the experts' group was restored with the optimizer
            return
        if epoch == self.unfreeze_epoch and self.reset_optimizer_state:
            optimizer.state.clear()
        self.unfreeze_and_add_param_group(pl_module.experts, optimizer, lr=optimizer.param_groups[0]["lr"])
