"""Expert parallelism for :class:`~gmnn.nn.MoELayer`: experts sharded over a process group, tokens sent by all-to-all.

Each of the P ranks of a process group holds ``E / P`` experts, a contiguous
block (rank r: experts ``r * E/P ... (r + 1) * E/P - 1``); the router and the
shared experts are replicated. A forward pass (GShard, Lepikhin et al., 2021;
DeepSpeed-MoE, Rajbhandari et al., 2022):

1. routes the rank's own tokens with the replicated router;
2. dropless: sorts the (token, expert) pairs by expert, exchanges the
   per-expert counts (one small ``all_to_all_single``, then one host read of
   the split sizes), and sends the rows to the experts' ranks with
   ``all_to_all_single`` of variable lengths (no padding). With a capacity:
   fixed ``[E, capacity, d_model]`` buffers per rank (GShard's per-group
   capacity), exchanged with equal splits, no host sync;
3. runs the local experts as grouped matrix products (``torch._grouped_mm``), or
   a loop over them, or batched over the capacity buffers;
4. returns the outputs with the reverse ``all_to_all_single`` and combines
   them with the router weights.

Autograd flows through both exchanges (:class:`_AllToAll`: the backward of an
all-to-all is the all-to-all with the splits swapped). The gradient of a local
expert therefore sums the contributions of every rank's tokens; the router's
and the shared experts' gradients are local to the rank and must be
all-reduced by the caller (DDP does it for the parameters it does not ignore).

:class:`ExpertParallelMoELayer` is a :class:`~gmnn.nn.MoELayer` whose
``compute`` (:class:`~gmnn.nn.moe.layer.ExpertCompute`) is :class:`ExpertParallel`:
the layer routes and combines as in one process, the strategy does steps 2 to 4.

Every rank of the group must call ``forward`` (and ``backward``) in step, with
the same layer configuration. Expert choice and Soft MoE routers are not
supported: an expert picks its tokens (or mixes its slots) among all tokens
of the batch, so sharding them would need every rank's tokens at every
expert. Gradient clipping by norm must count the shards once each:
:func:`clip_grad_norm_`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gmnn.nn.moe.experts import MLPExperts
from gmnn.nn.moe.layer import ExpertCompute, MoELayer

__all__ = [
    "ExpertParallel",
    "ExpertParallelMoELayer",
    "all_to_all",
    "check_shardable",
    "clip_grad_norm_",
    "expert_keys",
    "gather_expert_state",
    "shard_expert_state",
]

EXPERT_PARAMS = ("w1", "b1", "w2", "b2")


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with variable splits along dim 0; backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, x: Tensor, output_splits: list[int], input_splits: list[int], group) -> Tensor:  # type: ignore[override]
        ctx.output_splits, ctx.input_splits, ctx.group = output_splits, input_splits, group
        out = x.new_empty(sum(output_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        out = grad.new_empty(sum(ctx.input_splits), *grad.shape[1:])
        dist.all_to_all_single(out, grad.contiguous(), ctx.input_splits, ctx.output_splits, group=ctx.group)
        return out, None, None, None


def all_to_all(x: Tensor, output_splits: list[int], input_splits: list[int], group=None) -> Tensor:
    """Differentiable ``torch.distributed.all_to_all_single`` of rows ``x [N, ...]`` with variable splits.

    Args:
        x: Rows to send, those for rank j in the j-th block of ``input_splits[j]`` rows.
        output_splits: Rows received from each rank.
        input_splits: Rows sent to each rank (sum = ``x.shape[0]``).
        group: The process group (``None``: the default group).
    """
    return _AllToAll.apply(x, list(output_splits), list(input_splits), group)


@torch.no_grad()
def clip_grad_norm_(parameters, sharded, max_norm: float, group=None) -> Tensor:
    """Clip gradients by the 2-norm of the whole model when some parameters are shards (expert parallelism).

    The squared norm counts every replicated parameter once (its gradient is
    the same on every rank after DDP's all-reduce) and every shard once: the
    shards' squared sums are added over ``group``. The result equals
    ``torch.nn.utils.clip_grad_norm_`` of the single-process model, with the
    same coefficient ``min(1, max_norm / (norm + 1e-6))`` on every rank. A
    collective over ``group``: call it on every rank in step.

    Args:
        parameters: All parameters to clip (those without a gradient are skipped).
        sharded: The parameters among them that are rank-local shards (the experts).
        max_norm: The largest total norm (> 0).
        group: The process group the shards are spread over (``None``: the default group).

    Returns:
        The total norm before clipping.

    Raises:
        ValueError: ``max_norm`` is not positive.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    shard_ids = {id(p.grad) for p in sharded if p.grad is not None}
    squares = torch.zeros(2, dtype=torch.float32, device=grads[0].device)  # [replicated, sharded]
    for grad in grads:
        squares[int(id(grad) in shard_ids)] += torch.linalg.vector_norm(grad.detach(), 2, dtype=torch.float32).pow(2)
    shard_part = squares[1:].clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(shard_part, group=group)
    total = (squares[0] + shard_part[0]).sqrt()
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.detach().mul_(coefficient.to(grad.dtype))
    return total


def expert_keys(state: Mapping[str, Tensor], prefix: str = "") -> list[str]:
    """Keys of the routed-expert parameters (``{prefix}experts.w1`` ...) in a state dict."""
    return [f"{prefix}experts.{name}" for name in EXPERT_PARAMS if f"{prefix}experts.{name}" in state]


def _check_layout(num_experts: int, num_ranks: int, rank: int) -> int:
    if isinstance(num_ranks, bool) or not isinstance(num_ranks, int) or num_ranks < 1:
        raise ValueError(f"num_ranks must be a positive integer, got {num_ranks!r}")
    if num_experts % num_ranks:
        raise ValueError(f"num_ranks={num_ranks} must divide num_experts={num_experts}")
    if not 0 <= rank < num_ranks:
        raise ValueError(f"rank must be in [0, num_ranks={num_ranks}), got {rank}")
    return num_experts // num_ranks


def shard_expert_state(state: Mapping[str, Tensor], rank: int, num_ranks: int, prefixes: list[str] | None = None) -> dict[str, Tensor]:
    """The state dict of one rank from a full single-process state dict: expert tensors sliced, the rest copied.

    Rank ``rank`` keeps experts ``rank * E/P ... (rank + 1) * E/P - 1`` of every
    ``{prefix}experts.{w1,b1,w2,b2}``; router parameters and buffers (the
    aux-loss-free ``selection_bias``) and shared experts are kept whole.

    Args:
        state: A full state dict (a layer's, or a model's with ``prefixes``).
        rank: The rank in the expert-parallel group.
        num_ranks: P.
        prefixes: Module prefixes of the MoE layers (``"blocks.0.ffn."``); ``None``: ``[""]`` (a layer's own state).

    Raises:
        ValueError: P does not divide the number of experts, or ``rank`` is out of range.
    """
    out = dict(state)
    for prefix in [""] if prefixes is None else prefixes:
        for key in expert_keys(state, prefix):
            local = _check_layout(state[key].shape[0], num_ranks, rank)
            out[key] = state[key][rank * local:(rank + 1) * local].clone()
    return out


def gather_expert_state(shards: list[Mapping[str, Tensor]], prefixes: list[str] | None = None) -> dict[str, Tensor]:
    """The full state dict from the state dicts of ranks ``0 ... P-1`` (inverse of :func:`shard_expert_state`)."""
    if not shards:
        raise ValueError("shards must hold the state dict of at least one rank")
    out = dict(shards[0])
    for prefix in [""] if prefixes is None else prefixes:
        for key in expert_keys(shards[0], prefix):
            out[key] = torch.cat([shard[key] for shard in shards])
    return out


TOKEN_CHOICE = "token-choice routers (SoftmaxTopKRouter, NoisyTopKRouter, SigmoidRouter)"


def check_shardable(layer: MoELayer, name: str = "layer") -> None:
    """Raise a one-line ``ValueError`` unless ``layer`` (called ``name`` in the message) can run expert-parallel.

    Token choice shards: a token's k experts are found from the token alone.
    Expert choice (an expert takes its top tokens of the batch) and Soft MoE
    (a slot mixes all tokens of a sequence) need every rank's tokens at every
    expert, so they are refused; so are experts other than a plain
    :class:`~gmnn.nn.moe.experts.MLPExperts` (or subclass without submodules).
    """
    router = layer.router
    if router.kind != "token":
        raise ValueError(f"{name}.router: expert parallelism supports {TOKEN_CHOICE}, got {type(router).__name__} "
                         f"(kind {router.kind!r}: each expert's input depends on all the tokens of the batch)")
    if not isinstance(layer.experts, MLPExperts) or list(layer.experts.children()):
        raise ValueError(f"{name}.experts: expert parallelism supports MLPExperts (MLP or GLU, no submodules), "
                         f"got {type(layer.experts).__name__}")


def _local_experts(experts: MLPExperts, start: int, stop: int) -> MLPExperts:
    """A copy of ``experts`` holding experts ``start ... stop - 1`` (fresh parameters, no full-size copy)."""
    if list(experts.children()):
        raise ValueError("experts must be an MLPExperts without submodules")
    local = copy.copy(experts)
    local._parameters = {}
    local._buffers = dict(experts._buffers)
    local._modules = {}
    for name, param in experts._parameters.items():
        local._parameters[name] = None if param is None else nn.Parameter(
            param.detach()[start:stop].clone(), requires_grad=param.requires_grad)
    local.num_experts = stop - start
    return local


class ExpertParallel(ExpertCompute):
    """The :class:`~gmnn.nn.moe.layer.ExpertCompute` of expert parallelism: this rank holds experts
    ``first_expert ... first_expert + num_local - 1`` of ``num_experts``; rows travel to the rank of their
    expert and back by all-to-all (a collective: every rank of ``group`` calls it in step).

    Args:
        num_experts: E, the experts of the whole layer.
        group: The expert-parallel process group (``None``: the default group; without an
            initialised ``torch.distributed``: one rank).

    Raises:
        ValueError: The group size does not divide E.
    """

    dense = False  # k == E too goes through the exchange: every expert runs on its own rank

    def __init__(self, num_experts: int, group: dist.ProcessGroup | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        self.group = group
        self.num_ranks = dist.get_world_size(group) if distributed else 1
        self.rank = dist.get_rank(group) if distributed else 0
        self.num_experts = num_experts
        self.num_local = _check_layout(num_experts, self.num_ranks, self.rank)
        self.first_expert = self.rank * self.num_local

    def num_held(self, num_experts: int) -> int:
        return self.num_local

    def _exchange(self, x: Tensor, output_splits: list[int], input_splits: list[int]) -> Tensor:
        if self.num_ranks == 1:
            return x
        return all_to_all(x, output_splits, input_splits, self.group)

    def _local_compute(self, experts: MLPExperts, rows: Tensor, expert_of_row: Tensor, per_expert: list[int]) -> Tensor:
        """Local experts on received rows (in any order): ``[N, d_model] -> [N, d_model]``, same row order."""
        order = expert_of_row.argsort(stable=True)
        sorted_rows = rows.index_select(0, order)
        if rows.shape[0] > 0 and experts.can_group(rows):  # grouped, no further host sync (empty: loop)
            offsets = torch.tensor(per_expert, device=rows.device).cumsum(0).to(torch.int32)
            outputs = experts.grouped(sorted_rows, offsets, expert_of_row.index_select(0, order))
        else:
            groups = sorted_rows.split(per_expert)
            # empty groups run too: the output stays in the graph, so every rank runs the backward exchange
            outputs = torch.cat([experts.expert(e, part) for e, part in enumerate(groups)])
        return outputs.index_select(0, order.argsort())

    def pairs(self, experts: MLPExperts, rows: Tensor, expert_ids: Tensor) -> Tensor:
        """Exchange the per-expert counts (one small all-to-all, one host read), send the rows to their
        experts' ranks (variable splits, no padding), run the local experts, send the outputs back."""
        counts = torch.bincount(expert_ids, minlength=self.num_experts)
        if self.num_ranks > 1:
            received = torch.empty_like(counts)  # [P * E/P]: what each source sends to my experts
            dist.all_to_all_single(received, counts, group=self.group)
        else:
            received = counts
        host = torch.stack([counts, received]).view(2, self.num_ranks, self.num_local).tolist()  # one host sync
        input_splits = [sum(row) for row in host[0]]
        output_splits = [sum(row) for row in host[1]]
        per_expert = [sum(host[1][s][e] for s in range(self.num_ranks)) for e in range(self.num_local)]
        mine = self._exchange(rows, output_splits, input_splits)  # sorted by global expert = by destination rank
        local_expert = torch.arange(self.num_local, device=rows.device).repeat(self.num_ranks)
        expert_of_row = local_expert.repeat_interleave(received.view(-1))
        return self._exchange(self._local_compute(experts, mine, expert_of_row, per_expert), input_splits, output_splits)

    def slots(self, experts: MLPExperts, rows: Tensor, num_experts: int, capacity: int) -> Tensor:
        """Exchange the fixed buffers with equal splits (no host sync), run the local experts batched, send back."""
        splits = [self.num_local * capacity] * self.num_ranks
        received = self._exchange(rows, splits, splits)  # [P, E/P, C, D] from every source
        per_expert = received.view(self.num_ranks, self.num_local, capacity, -1).transpose(0, 1)
        outputs = experts.batched(per_expert.reshape(self.num_local, self.num_ranks * capacity, -1))
        outputs = outputs.view(self.num_local, self.num_ranks, capacity, -1).transpose(0, 1).reshape(-1, rows.shape[-1])
        return self._exchange(outputs, splits, splits)  # [E * C, D], my tokens' slots again


class ExpertParallelMoELayer(MoELayer):
    """A :class:`~gmnn.nn.MoELayer` whose experts are sharded over a process group (expert parallelism):
    the layer with the :class:`ExpertParallel` compute.

    Built from a full single-process layer: ``ExpertParallelMoELayer(layer, group)``
    keeps its router, shared experts and settings and the expert block of this
    rank (its parameters are fresh copies: the full layer may be freed). The
    outputs, aux loss and gradients on every rank equal those of ``layer`` run
    on that rank's tokens alone, except that each local expert's gradient is
    the sum over all ranks' tokens (GShard, Lepikhin et al., 2021;
    DeepSpeed-MoE, Rajbhandari et al., 2022). The state dict holds the local
    shard under the single-process names; :meth:`full_state_dict` (a
    collective) and :meth:`load_full_state_dict` convert. ``expert(i, x)`` runs
    local expert ``i`` (``0 ... E/P - 1``).

    Args:
        layer: A token-choice :class:`~gmnn.nn.MoELayer` with all E experts.
        group: The expert-parallel process group (``None``: the default group;
            without an initialised ``torch.distributed``: one rank).

    Raises:
        ValueError: The router is not token choice, the experts are not
            :class:`~gmnn.nn.moe.experts.MLPExperts`, or the group size does not divide E.
    """

    compute: ExpertParallel

    def __init__(self, layer: MoELayer, group: dist.ProcessGroup | None = None) -> None:
        check_shardable(layer)
        compute = ExpertParallel(layer.num_experts, group)
        start = compute.first_expert
        super().__init__(
            router=layer.router, experts=_local_experts(layer.experts, start, start + compute.num_local),
            shared=layer.shared, capacity_factor=layer.capacity_factor, balance_weight=layer.balance_weight,
            z_weight=layer.z_weight, importance_weight=layer.importance_weight, balance_scope=layer.balance_scope,
            sequence_balance_weight=layer.sequence_balance_weight, compute=compute,
            similarity_same_weight=layer.similarity_same_weight,
            similarity_different_weight=layer.similarity_different_weight,
            similarity_pairs=layer.similarity_pairs, similarity_distance=layer.similarity_distance,
        )
        self._register_load_state_dict_pre_hook(self._take_own_block)

    @property
    def group(self) -> dist.ProcessGroup | None:
        """The expert-parallel process group."""
        return self.compute.group

    @property
    def num_ranks(self) -> int:
        """P, the ranks the experts are spread over."""
        return self.compute.num_ranks

    @property
    def rank(self) -> int:
        """This process's rank in :attr:`group`."""
        return self.compute.rank

    @property
    def num_local(self) -> int:
        """E / P, the experts this rank holds."""
        return self.compute.num_local

    @property
    def first_expert(self) -> int:
        """The global index of this rank's first expert."""
        return self.compute.first_expert

    def _take_own_block(self, state: dict, prefix: str, *args) -> None:
        """Loading a full (single-process) state dict: keep this rank's block of every expert tensor."""
        stop = self.first_expert + self.num_local
        for key in expert_keys(state, prefix):
            if state[key].shape[0] == self.num_experts != self.num_local:
                state[key] = state[key][self.first_expert:stop]

    def extra_repr(self) -> str:
        return f"experts {self.first_expert}..{self.first_expert + self.num_local - 1} of {self.num_experts}, ranks={self.num_ranks}"

    def expert_parameter_names(self, prefix: str = "") -> list[str]:
        """Names of the sharded (rank-local) parameters, e.g. for ``_ddp_params_and_buffers_to_ignore``."""
        return [f"{prefix}experts.{name}" for name, p in self.experts.named_parameters()]

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, Tensor]:
        """The single-process layer's state dict (expert shards all-gathered). A collective: call on every rank."""
        state = {key: value.detach().clone() for key, value in self.state_dict().items()}
        if self.num_ranks == 1:
            return state
        for key in expert_keys(state):
            parts = [torch.empty_like(state[key]) for _ in range(self.num_ranks)]
            dist.all_gather(parts, state[key].contiguous(), group=self.group)
            state[key] = torch.cat(parts)
        return state

    def load_full_state_dict(self, state: Mapping[str, Tensor], strict: bool = True):
        """Load a single-process layer's state dict (this rank's expert block is taken). No communication.

        ``load_state_dict`` does the same for full-size expert tensors (a pre-hook), so a model holding
        these layers loads a single-process checkpoint directly.
        """
        return self.load_state_dict(state, strict=strict)

    def to_single_process(self) -> MoELayer:
        """A plain :class:`~gmnn.nn.MoELayer` with all the experts (a collective: call on every rank)."""
        state = self.full_state_dict()
        experts = _local_experts(self.experts, 0, self.num_local)
        for name in EXPERT_PARAMS:
            if getattr(experts, name, None) is not None:
                experts._parameters[name] = nn.Parameter(state[f"experts.{name}"].clone())
        experts.num_experts = self.num_experts
        layer = MoELayer(router=copy.deepcopy(self.router), experts=experts, shared=copy.deepcopy(self.shared),
                         capacity_factor=self.capacity_factor, balance_weight=self.balance_weight,
                         z_weight=self.z_weight, importance_weight=self.importance_weight,
                         balance_scope=self.balance_scope, sequence_balance_weight=self.sequence_balance_weight)
        layer.load_state_dict(state)
        return layer
