"""Expert parallelism on Lightning's DDP: shard every MoELayer's experts over the processes.

:class:`ExpertParallel` turns a data-parallel run into a data + expert
parallel one without changing the model class: at ``setup`` (after the
process group exists, before DDP wraps the module and the optimizers are
built) it replaces each :class:`~gmnn.nn.MoELayer` by an
:class:`~gmnn.nn.moe.parallel.ExpertParallelMoELayer` over the default
group (E/P experts per process; GShard, Lepikhin et al., 2021; DeepSpeed-MoE,
Rajbhandari et al., 2022) and lists the expert parameters in the module's
``_ddp_params_and_buffers_to_ignore``, so DDP neither broadcasts nor
all-reduces them. Their gradient already sums every rank's tokens (through the
backward all-to-all); a hook divides it by P so that it matches DDP's average
for the replicated parameters (router, attention, shared experts).

Checkpoints hold the full single-process state: expert tensors and their
optimizer state are all-gathered at save (every rank builds the checkpoint in
step) and each rank takes its block at load, so a checkpoint moves between P
= 1 and P = 2. To take the block before the module's own ``on_load_checkpoint``
(gmnn's architecture check compares shapes), ``setup`` wraps that hook on the
module instance; the optimizer state is sliced at ``on_fit_start``, after
DDP built the optimizers and before Lightning loads their state.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from gmnn import pl
from gmnn.nn.moe.layer import MoELayer
from gmnn.nn.moe.parallel import (
    ExpertParallelMoELayer,
    check_shardable,
    clip_grad_norm_,
    expert_keys,
)
from gmnn.pl import Callback, DDPStrategy
from gmnn.validation import check_positive_int

__all__ = ["ExpertParallel"]


def _count(values: list[float]) -> str:
    """Batch counts per dataloader as a short string (``inf``: a loader without a length)."""
    text = ", ".join("inf" if v == float("inf") else str(int(v)) for v in values)
    return text if len(values) == 1 else f"[{text}]"


class ExpertParallel(Callback):
    """Shard the experts of every token-choice :class:`~gmnn.nn.MoELayer` over the DDP processes.

    Use with ``trainer.strategy: ddp`` (``DDPStrategy``); with one process it
    does nothing. By default the experts are sharded over all processes; with
    ``expert_parallel_size`` = P_e < world size W, consecutive blocks of P_e
    ranks each shard the experts (data x expert layout) and the expert
    gradients are summed over the W / P_e replicas before each optimizer step.

    Every rank must run the same number of forward passes (each one enters the
    same all-to-alls): at the start of every train / validation / test /
    predict epoch the processes compare their batch counts and all raise a
    ``ValueError`` if they differ (rather than hang). Gradient clipping by
    norm (``gradient_clip_val``) counts every expert shard and every
    replicated parameter once, as one process would
    (:func:`~gmnn.nn.moe.parallel.clip_grad_norm_` in place of the
    precision plugin's local ``clip_grad_norm_``). Only token-choice routers
    shard (expert choice and Soft MoE are refused at ``setup``). P must divide
    E; the ranks must build the same initial model (rank 0's experts are
    broadcast before sharding, so an unseeded run is still consistent).

    Args:
        expert_parallel_size: Processes sharing one copy of the experts (``None``: all).

    Raises:
        ValueError: ``expert_parallel_size`` does not divide the number of processes.
    """

    def __init__(self, expert_parallel_size: int | None = None) -> None:
        if expert_parallel_size is not None:
            check_positive_int("expert_parallel_size", expert_parallel_size)
        self.expert_parallel_size = expert_parallel_size
        self.layers: dict[str, ExpertParallelMoELayer] = {}
        self.replica_group = None  # the ranks holding the same experts (data x expert layout), or None
        self.mesh: DeviceMesh | None = None  # the (data, expert) mesh of a data x expert layout
        self._pending: dict[str, Any] | None = None

    def _groups(self, trainer: pl.Trainer):
        """``(expert group, replica group)`` of this rank, the two dimensions of a ``("data", "expert")`` DeviceMesh.

        Consecutive ranks form one row of the mesh (they share the experts out); a column holds
        the ranks with the same block of experts. A dimension of size 1 gives ``None`` (the
        default group for the expert dimension, no reduction for the data dimension).
        """
        world, size = trainer.world_size, self.expert_parallel_size or trainer.world_size
        if world % size:
            raise ValueError(f"expert_parallel_size={size} must divide the number of processes {world}")
        if size == world:
            return None, None
        self.mesh = init_device_mesh(trainer.strategy.root_device.type, (world // size, size),
                                     mesh_dim_names=("data", "expert"))
        return self.mesh.get_group("expert"), self.mesh.get_group("data")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size <= 1 or self.layers:
            return
        if not isinstance(trainer.strategy, DDPStrategy):
            raise ValueError(f"strategy: ExpertParallel needs DDPStrategy ('ddp'), got {type(trainer.strategy).__name__}")
        device = trainer.strategy.root_device
        targets = self.shardable_layers(pl_module)  # every rank raises here, before any collective
        expert_group, self.replica_group = self._groups(trainer)
        for name, module in targets:
            for param in module.experts.parameters():  # the same full experts on every rank before sharding
                buffer = param.data.to(device)
                dist.broadcast(buffer, src=0)
                param.data.copy_(buffer)
            layer = ExpertParallelMoELayer(module, expert_group)
            parent_name, _, attr = name.rpartition(".")
            setattr(pl_module.get_submodule(parent_name) if parent_name else pl_module, attr, layer)
            self.layers[f"{name}."] = layer
        ignored = [key for prefix, layer in self.layers.items() for key in layer.expert_parameter_names(prefix)]
        pl_module._ddp_params_and_buffers_to_ignore = [*getattr(pl_module, "_ddp_params_and_buffers_to_ignore", []), *ignored]
        scale = 1.0 / trainer.world_size
        for layer in self.layers.values():
            for param in layer.experts.parameters():
                param.register_hook(lambda grad: grad * scale)
        module_hook = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:  # runs before any callback's hook
            checkpoint["state_dict"] = self._own_blocks(checkpoint["state_dict"])
            module_hook(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint  # the module's checks then see this rank's shapes
        self._take_over_norm_clipping(trainer)

    @staticmethod
    def shardable_layers(pl_module: torch.nn.Module) -> list[tuple[str, MoELayer]]:
        """The ``(name, layer)`` of every :class:`~gmnn.nn.MoELayer` to shard; a one-line ``ValueError`` for one that cannot."""
        layers = []
        for name, module in pl_module.named_modules():
            if not isinstance(module, MoELayer) or isinstance(module, ExpertParallelMoELayer):
                continue
            if type(module) is not MoELayer:
                raise ValueError(f"{name}: ExpertParallel shards MoELayer itself, not the subclass {type(module).__name__} "
                                 "(its forward may differ from the sharded layer's); use MoELayer, or shard it yourself "
                                 "with gmnn.nn.ExpertParallelMoELayer")
            check_shardable(module, name)
            layers.append((name, module))
        return layers

    def _take_over_norm_clipping(self, trainer: pl.Trainer) -> None:
        """Norm clipping over the whole model: the precision plugin's local ``clip_grad_norm_`` would miss the other shards."""
        precision = trainer.precision_plugin
        sharded = [param for _, _, param in self._expert_params()]
        group = next(iter(self.layers.values())).group if self.layers else None

        def clip_grad_by_norm(optimizer, clip_val) -> None:
            clip_grad_norm_(list(precision.main_params(optimizer)), sharded, float(clip_val), group)

        precision.clip_grad_by_norm = clip_grad_by_norm  # this trainer's plugin only; Lightning still validates the settings

    def _check_equal_batches(self, trainer: pl.Trainer, counts: Any, loop: str) -> None:
        """All ranks raise together if their numbers of batches differ (a rank with more would hang in an all-to-all)."""
        if not self.layers:
            return
        counts = [counts] if isinstance(counts, (int, float)) else list(counts)
        local = torch.tensor(counts, dtype=torch.float64, device=trainer.strategy.root_device)
        both = torch.cat([local, -local])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        most, fewest = both[:len(counts)].tolist(), (-both[len(counts):]).tolist()
        if most != fewest:
            raise ValueError(f"ExpertParallel: the processes have between {_count(fewest)} and {_count(most)} {loop} "
                             f"batches; every process must run the same number (make the {loop} set a multiple of "
                             f"devices x batch_size, or set limit_{loop}_batches to an integer all can reach)")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_equal_batches(trainer, trainer.num_training_batches, "train")

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        counts = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        self._check_equal_batches(trainer, counts, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_equal_batches(trainer, trainer.num_test_batches, "test")

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_equal_batches(trainer, trainer.num_predict_batches, "predict")

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        """Data x expert layout: sum the expert gradients over the replicas of each block (once per step)."""
        if self.replica_group is None:
            return
        for _, _, param in self._expert_params():
            if param.grad is not None:
                dist.all_reduce(param.grad, group=self.replica_group)

    def _own_blocks(self, state: dict[str, Any]) -> dict[str, Any]:
        out = dict(state)
        for prefix, layer in self.layers.items():
            for key in expert_keys(state, prefix):
                if state[key].shape[0] == layer.num_experts != layer.num_local:
                    out[key] = state[key][layer.first_expert:layer.first_expert + layer.num_local]
        return out

    def _expert_params(self) -> list[tuple[str, ExpertParallelMoELayer, torch.nn.Parameter]]:
        return [(f"{prefix}experts.{name}", layer, param) for prefix, layer in self.layers.items()
                for name, param in layer.experts.named_parameters()]

    @staticmethod
    def _optimizer_indices(optimizer: torch.optim.Optimizer) -> dict[int, int]:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return {id(p): index for index, p in enumerate(params)}

    @torch.no_grad()
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Full experts and full optimizer state in the checkpoint (a collective: every rank builds it)."""
        if not self.layers:
            return
        for prefix, layer in self.layers.items():
            for key, value in layer.full_state_dict().items():
                checkpoint["state_dict"][prefix + key] = value
        for optimizer, saved in zip(trainer.optimizers, checkpoint.get("optimizer_states", [])):
            indices = self._optimizer_indices(optimizer)
            for _, layer, param in self._expert_params():
                index = indices.get(id(param))
                if index not in saved["state"]:
                    continue
                state = saved["state"][index] = dict(saved["state"][index])  # the live optimizer's dict: copy
                for key, value in sorted(state.items()):
                    if torch.is_tensor(value) and value.shape == param.shape:
                        parts = [torch.empty_like(value) for _ in range(layer.num_ranks)]
                        dist.all_gather(parts, value.contiguous(), group=layer.group)
                        state[key] = torch.cat(parts)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Remember the checkpoint: DDP restores it before the optimizers exist (the weights' pre-hook slices the experts)."""
        self._pending = checkpoint if self.layers else None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Take this rank's block of the full optimizer state, before Lightning loads it into the optimizers."""
        checkpoint, self._pending = self._pending, None
        if checkpoint is None:
            return
        for optimizer, saved in zip(trainer.optimizers, checkpoint.get("optimizer_states", [])):
            indices = self._optimizer_indices(optimizer)
            for _, layer, param in self._expert_params():
                state = saved["state"].get(indices.get(id(param)), {})
                stop = layer.first_expert + layer.num_local
                for key, value in state.items():
                    if torch.is_tensor(value) and value.dim() and value.shape[0] == layer.num_experts != layer.num_local:
                        state[key] = value[layer.first_expert:stop]
