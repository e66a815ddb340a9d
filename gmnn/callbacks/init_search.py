"""Start training from the best of several random initialisations (selected on the validation set)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor

from gmnn import pl as L
from gmnn.models.optim import adam
from gmnn.validation import check_positive, check_positive_int


class InitSearch(L.Callback):
    """Try several random initialisations briefly; train the one with the lowest validation loss.

    How a mixture of experts splits a task is decided early: the validation
    loss after the first epoch predicts the final test error and the mutual
    information between expert and class well, and it varies a lot between
    random initialisations (dead experts, classes shared by two experts).
    Before the first training step, this callback trains ``candidates`` fresh
    initialisations of the model (the model's own initial weights are
    candidate 0) for ``steps`` steps each, with Adam at a constant ``lr``,
    scores each by its task loss (the model's ``nll`` term: the mixture's
    negative log-likelihood for classification and regression) over the
    validation set, and loads the
    best, as trained, into the model; training then starts from step 0 as
    usual (fresh optimizer state and schedule). The search uses the training
    and validation data only; the candidates' seeds are drawn from the global
    random state, so they follow ``seed_everything``. Skipped when resuming
    from a checkpoint; with several processes each searches on its own shard
    and process 0's choice is broadcast.

    Args:
        candidates: Number of initialisations to compare (1: no search).
        steps: Training steps per candidate; ``None`` = one epoch (``limit_train_batches`` applies).
        lr: Constant Adam learning rate of the candidates (the model's weight decay applies).
    """

    def __init__(self, candidates: int = 4, steps: int | None = None, lr: float = 1e-3) -> None:
        check_positive_int("candidates", candidates)
        if steps is not None:
            check_positive_int("steps", steps)
        check_positive("lr", lr)
        self.candidates, self.steps, self.lr = candidates, steps, lr
        self.scores: list[float] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.candidates == 1 or trainer.global_step > 0:
            return
        initial = _copy_state(module)
        seeds = torch.randint(0, 2**31 - 1, (self.candidates,)).tolist()
        best_state, best_score, self.scores = initial, math.inf, []
        for candidate in range(self.candidates):
            if candidate == 0:
                module.load_state_dict(initial)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seeds[candidate])
                    fresh = type(module)(**{k: v for k, v in module.hparams.items() if not k.startswith("_")})
                module.load_state_dict(fresh.state_dict())
            self._train(trainer, module)
            score = self._validate(trainer, module)
            self.scores.append(score)
            if score < best_score:
                best_state, best_score = _copy_state(module), score
        module.load_state_dict(best_state)
        if trainer.world_size > 1:
            module.load_state_dict(trainer.strategy.broadcast(_copy_state(module), src=0))
        module.log("train/init_search_best_nll", best_score, on_step=False, on_epoch=True, batch_size=1, rank_zero_only=True)
        if trainer.is_global_zero:
            chosen = self.scores.index(best_score) if best_score in self.scores else 0
            print(f"InitSearch: validation NLL of the {self.candidates} initialisations "
                  f"{[round(s, 4) for s in self.scores]}, training initialisation {chosen}")

    def _train(self, trainer: L.Trainer, module: Any) -> None:
        hp = module.hparams
        params = (p for p in module.parameters() if p.requires_grad)
        optimizer = adam(params, self.lr, hp.get("weight_decay", 0.0), bool(hp.get("decoupled_weight_decay", False)))
        steps = self.steps if self.steps is not None else int(min(trainer.num_training_batches, 10**9))
        module.train()
        loader = trainer.train_dataloader
        batches = itertools.islice(itertools.cycle(loader) if self.steps is not None else loader, steps)
        for batch in batches:
            batch = trainer.strategy.batch_to_device(batch)
            x, y = batch[0], batch[1]
            out = module(x)
            loss = torch.stack(list(module.loss_terms(out, x, y).values())).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _validate(self, trainer: L.Trainer, module: Any) -> float:
        loaders = trainer.val_dataloaders
        if loaders is None and trainer.datamodule is not None:
            loaders = trainer.datamodule.val_dataloader()
        if loaders is None:
            raise ValueError("InitSearch scores initialisations on the validation set: the data module has no val_dataloader")
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        limit = trainer.limit_val_batches
        if isinstance(limit, float):
            limit = math.inf if limit >= 1.0 else max(1, int(limit * len(loader)))
        module.eval()
        total, count = torch.zeros((), device=module.device), 0
        for index, batch in enumerate(loader):
            if index >= limit:
                break
            batch = trainer.strategy.batch_to_device(batch)
            x, y = batch[0], batch[1]
            terms = module.loss_terms(module(x), x, y)  # eval mode: the task loss, no regularizers
            loss = terms["nll"] if "nll" in terms else torch.stack(list(terms.values())).sum()
            total += loss * y.shape[0]
            count += y.shape[0]
        module.train()
        return (total / max(count, 1)).item()


def _copy_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
