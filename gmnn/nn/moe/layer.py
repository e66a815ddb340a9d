"""A drop-in sparse mixture-of-experts feed-forward layer for token tensors."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gmnn.nn.functional.dispatch import (
    capacity_of,
    capacity_slots,
    gather_into_slots,
    read_from_slots,
)
from gmnn.nn.functional.regularizers import (
    DISTANCES,
    importance_loss,
    pair_similarity_terms,
    router_z_loss,
    sample_token_pairs,
    sequence_balance_loss,
)
from gmnn.nn.moe.experts import MLPExperts, SharedExperts
from gmnn.nn.moe.record import Routing
from gmnn.nn.moe.routers import Route, Router, SoftmaxTopKRouter
from gmnn.validation import check_choice, check_non_negative, check_positive_int

__all__ = ["ExpertCompute", "LocalExperts", "MoELayer", "importance_of_weights", "masked_z_loss", "routed_load_balancing_loss"]


def routed_load_balancing_loss(router_probs: Tensor, indices: Tensor, mask: Tensor | None = None,
                               global_counts: bool = False) -> Tensor:
    """Switch load-balancing loss ``E * sum_i f_i P_i`` over the routed pairs (Fedus et al., 2021).

    Unlike :func:`gmnn.nn.functional.regularizers.load_balancing_loss` (top-1 by argmax of
    the gate), ``f_i`` is the fraction of the actually routed (token, expert)
    pairs sent to expert i: k per token, after router noise, over the whole
    batch. ``P_i`` is the mean router probability of expert i. Equals 1 under
    uniform routing. Tokens outside ``mask`` and slots ``-1`` do not count.

    Args:
        router_probs: Router probabilities ``[T, E]``.
        indices: Routed experts ``[T, k]`` (``-1``: empty slot).
        mask: ``[T]`` bool, the tokens that count, or ``None``.
        global_counts: Sum the counts ``f`` over the ranks of ``torch.distributed``
            (Qwen's global-batch balancing; ``P`` stays local, so the gradient
            needs no collective). Every rank must call it in step.
    """
    valid = indices >= 0
    if mask is not None:
        valid = valid & mask.unsqueeze(-1)
    ones = valid.to(router_probs.dtype)
    counts = router_probs.new_zeros(router_probs.shape[-1]).scatter_add(0, indices.clamp_min(0).reshape(-1), ones.reshape(-1))
    if global_counts and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counts = counts.detach().clone()
        dist.all_reduce(counts)
    fraction = counts / counts.sum().clamp_min(1)
    if mask is None:
        mean_probs = router_probs.mean(dim=0)
    else:
        weight = mask.to(router_probs.dtype).unsqueeze(-1)
        mean_probs = (router_probs * weight).sum(0) / weight.sum().clamp_min(1)
    return router_probs.shape[-1] * (fraction.detach() * mean_probs).sum()


def importance_of_weights(routing: Routing) -> Tensor:
    """Importance loss (Shazeer et al., 2017): squared CV of the per-expert sums of the combine weights.

    Uses the sparse combine weights of ``routing`` (the probabilities for Soft MoE); padding counts zero.
    """
    if routing.selected is None or routing.weights is None:
        gates = routing.probs
    else:
        gates = torch.zeros_like(routing.probs).scatter_add(-1, routing.selected.clamp_min(0), routing.weights)
    if routing.mask is not None:
        gates = gates * routing.mask.unsqueeze(-1).to(gates.dtype)
    return importance_loss(gates)


def masked_z_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Router z-loss ``mean (logsumexp logits)^2`` (Zoph et al., 2022) over the tokens in ``mask``."""
    if mask is None:
        return router_z_loss(logits)
    z = torch.logsumexp(logits.float(), dim=-1).pow(2)
    return (z * mask.to(z.dtype)).sum() / mask.sum().clamp_min(1)


class ExpertCompute:
    """Where a :class:`MoELayer` runs its routed experts on token-choice routings: the layer routes and
    combines, its ``compute`` runs the experts. :class:`LocalExperts` runs them in this process;
    :class:`~gmnn.nn.moe.parallel.ExpertParallel` sends the rows to the ranks that hold them.

    The interface, three members:

    * :meth:`num_held`: how many of the E experts the layer's ``experts`` module holds;
    * :meth:`pairs`: dropless routing, rows sorted by expert -> expert outputs, same order;
    * :meth:`slots`: capacity routing, one fixed buffer per expert -> outputs, same layout;

    and ``dense`` (class attribute): whether ``k == E`` may run every expert on every token.
    """

    dense: bool = False

    def num_held(self, num_experts: int) -> int:
        """The number of experts the layer's ``experts`` module holds out of ``num_experts``."""
        raise NotImplementedError

    def pairs(self, experts: MLPExperts, rows: Tensor, expert_ids: Tensor) -> Tensor:
        """Routed experts on rows ``[N, d_model]`` sorted by expert (``expert_ids [N]``, ascending global ids);
        the outputs ``[N, d_model]`` in the same order."""
        raise NotImplementedError

    def slots(self, experts: MLPExperts, rows: Tensor, num_experts: int, capacity: int) -> Tensor:
        """Routed experts on fixed buffers ``[E * capacity, d_model]`` (expert e's rows in block e); the outputs
        ``[E * capacity, d_model]`` in the same layout."""
        raise NotImplementedError


class LocalExperts(ExpertCompute):
    """All experts in this process: dropless pairs as grouped matrix products (``torch._grouped_mm``,
    no host sync) or, where that kernel is missing, a loop over the non-empty groups; capacity
    buffers as batched matmuls."""

    dense = True

    def num_held(self, num_experts: int) -> int:
        return num_experts

    def pairs(self, experts: MLPExperts, rows: Tensor, expert_ids: Tensor) -> Tensor:
        if experts.can_group(rows):  # no loop over experts, no host sync
            counts = torch.zeros(experts.num_experts, dtype=torch.int32, device=rows.device)
            ones = torch.ones_like(expert_ids, dtype=torch.int32)
            offsets = counts.scatter_add_(0, expert_ids, ones).cumsum(0, dtype=torch.int32)
            return experts.grouped(rows, offsets, expert_ids)
        counts = torch.bincount(expert_ids, minlength=experts.num_experts).tolist()  # one host sync
        return experts.looped(rows, counts)

    def slots(self, experts: MLPExperts, rows: Tensor, num_experts: int, capacity: int) -> Tensor:
        return experts.batched(rows.view(num_experts, capacity, -1)).reshape(num_experts * capacity, -1)


class MoELayer(nn.Module):
    """Sparse mixture-of-experts feed-forward layer (Shazeer et al., 2017; Fedus et al., 2021).

    Replaces a transformer FFN: tokens ``[..., d_model]`` go through a
    ``router`` (:mod:`gmnn.nn.moe.routers`) to ``experts``
    (:mod:`gmnn.nn.moe.experts`), plus optional ``shared`` experts every token
    uses. Either give ``router=`` and ``experts=`` modules (YAML:
    ``class_path`` / ``init_args``), or the sizes: ``MoELayer(d_model, hidden,
    num_experts, k)`` builds softmax top-k routing (router with a bias) over
    GELU MLP experts.

    Top-1 (``k=1``) scales the expert output by the router probability
    (Switch Transformers): the router gets a gradient from the task loss.
    For ``k > 1`` the k weights are renormalised.

    How the experts run, by router kind:

    * token choice, exact (default, dropless): the routed (token, expert)
      pairs are sorted by expert and both expert layers run as grouped matrix
      products (``torch._grouped_mm``; no loop over experts, no host sync);
      where this PyTorch build lacks it for the device and dtype, or a width is
      not a multiple of 16 bytes, a loop over the non-empty groups after one
      host sync (the documented fallback). ``k == num_experts``: every expert
      on every token, as batched matmuls (the dense mixture).
    * token choice with ``capacity_factor > 0``: fixed buffers of
      ``ceil(capacity_factor * T * k / E)`` rows per expert (static shapes,
      ``torch.compile(fullgraph=True)``). A pair beyond its expert's capacity
      is dropped (adds nothing; the residual carries the token);
      ``dropped_fraction`` holds the fraction dropped in the last call.
    * expert choice and Soft MoE: fixed ``[E, c, d_model]`` buffers, static shapes.

    The token-choice paths run the experts through ``compute``, an
    :class:`ExpertCompute` (:class:`LocalExperts` by default; expert
    parallelism: :class:`~gmnn.nn.moe.parallel.ExpertParallelMoELayer`).

    ``forward(x, mask=None, return_routing=False)`` returns ``(output, aux_loss)``
    (and the live :class:`~gmnn.nn.moe.record.Routing` with
    ``return_routing=True``). ``aux_loss = balance_weight * balance +
    importance_weight * importance + z_weight * z``; the unweighted terms of
    the last call are in ``last_losses`` (and ``last_routing.losses``), the
    detached routing in ``last_routing``. ``mask [...]`` (bool, ``True`` for
    tokens that count) excludes padding from the losses, the capacity buffers,
    expert choice and the aux-loss-free load; padding tokens get no routed output.

    Args:
        d_model: Token width (taken from ``router`` when it is given).
        hidden: Hidden width of each default expert.
        num_experts: Number of experts E (taken from ``router`` when it is given).
        k: Experts per token of the default router.
        noise_std: Std of Gaussian noise on the default router's logits while training.
        capacity_factor: 0 for dropless token choice, else a factor > 0 (e.g. 1.25).
        balance_weight: Weight of the Switch load-balancing loss (token choice only).
        z_weight: Weight of the router z-loss (Zoph et al., 2022).
        router: A :class:`~gmnn.nn.moe.routers.Router`.
        experts: A :class:`~gmnn.nn.moe.experts.MLPExperts` (or subclass).
        shared: Optional :class:`~gmnn.nn.moe.experts.SharedExperts`.
        importance_weight: Weight of the importance loss (Shazeer et al., 2017) on the combine weights.
        balance_scope: ``"local"`` or ``"global"``: count the expert loads of the
            balance loss over all ranks of ``torch.distributed`` (every rank must
            then call forward in step).
        sequence_balance_weight: Weight of DeepSeek-V3's sequence-wise balance loss
            (:func:`~gmnn.nn.functional.regularizers.sequence_balance_loss`, token
            choice only; term ``sequence_balance``); a sequence is the second-last
            axis of the input (an input ``[T, d_model]`` is one sequence).
        compute: Where the routed experts run (:class:`ExpertCompute`; ``None``: :class:`LocalExperts`).
        similarity_same_weight: beta_s of the token-level sample-similarity loss (Krishnamurthy, Watkins &
            Gaertner, 2023): tokens with nearby router inputs to the same experts (term ``similarity_same``).
        similarity_different_weight: beta_d of it: distant tokens to different experts (term
            ``similarity_different``, the negated "different" term, so that the weighted sum rewards it).
        similarity_pairs: Token pairs drawn per call for the similarity loss (memory ``O(pairs)``, never ``[T, T]``).
        similarity_distance: ``"euclidean"`` or ``"cosine"``: distance between the router inputs of a pair.

    Sample similarity at token level (:func:`~gmnn.nn.functional.regularizers.pair_similarity_terms`):
    every call draws ``similarity_pairs`` pairs of its tokens uniformly (with replacement; pairs with a
    padding token weigh 0) and adds ``beta_s * same - beta_d * different`` over them, with distances
    between the router's inputs (no gradient) and the router probabilities. Any router kind.

    Hard-EM allocation: :meth:`assign` sets the experts and weights of the next call's tokens (token
    choice only), overriding the router's selection while keeping its probabilities and logits (for
    the balancing losses and a loss that fits the router to the allocation; see
    :class:`gmnn.models.MoETransformerLM`'s ``allocation_steps``).
    """

    def __init__(
        self,
        d_model: int | None = None,
        hidden: int | None = None,
        num_experts: int | None = None,
        k: int = 2,
        noise_std: float = 0.0,
        capacity_factor: float = 0.0,
        balance_weight: float = 1e-2,
        z_weight: float = 1e-3,
        *,
        router: Router | None = None,
        experts: MLPExperts | None = None,
        shared: SharedExperts | None = None,
        importance_weight: float = 0.0,
        balance_scope: str = "local",
        sequence_balance_weight: float = 0.0,
        compute: ExpertCompute | None = None,
        similarity_same_weight: float = 0.0,
        similarity_different_weight: float = 0.0,
        similarity_pairs: int = 1024,
        similarity_distance: str = "euclidean",
    ) -> None:
        super().__init__()
        for name, value in [("noise_std", noise_std), ("capacity_factor", capacity_factor),
                            ("balance_weight", balance_weight), ("z_weight", z_weight),
                            ("importance_weight", importance_weight),
                            ("sequence_balance_weight", sequence_balance_weight),
                            ("similarity_same_weight", similarity_same_weight),
                            ("similarity_different_weight", similarity_different_weight)]:
            check_non_negative(name, value)
        check_choice("balance_scope", balance_scope, ("local", "global"))
        check_positive_int("similarity_pairs", similarity_pairs)
        check_choice("similarity_distance", similarity_distance, DISTANCES)
        if router is None:
            if d_model is None or num_experts is None:
                raise ValueError("d_model and num_experts are required when no router is given")
            router = SoftmaxTopKRouter(d_model, num_experts, k, noise_std=noise_std, bias=True)
        elif noise_std:
            raise ValueError("noise_std applies to the default router only: give it to the router")
        if experts is None:
            if hidden is None:
                raise ValueError("hidden is required when no experts module is given")
            experts = MLPExperts(router.d_model, hidden, router.num_experts)
        compute = LocalExperts() if compute is None else compute
        for name, value in [("d_model", d_model), ("num_experts", num_experts)]:
            if value is not None and value != getattr(router, name):
                raise ValueError(f"{name}={value} differs from the router's {getattr(router, name)}")
            held = getattr(router, name) if name == "d_model" else compute.num_held(router.num_experts)
            if getattr(experts, name) != held:
                raise ValueError(f"experts.{name}={getattr(experts, name)} differs from the router's {held}")
        if capacity_factor > 0 and router.kind != "token":
            raise ValueError(f"capacity_factor applies to token-choice routers, not to kind {router.kind!r}")
        self.router, self.experts, self.shared, self.compute = router, experts, shared, compute
        self.d_model, self.num_experts, self.k = router.d_model, router.num_experts, router.k
        self.capacity_factor = float(capacity_factor)
        self.balance_weight, self.z_weight = float(balance_weight), float(z_weight)
        self.importance_weight, self.balance_scope = float(importance_weight), balance_scope
        self.sequence_balance_weight = float(sequence_balance_weight)
        self.similarity_same_weight = float(similarity_same_weight)
        self.similarity_different_weight = float(similarity_different_weight)
        self.similarity_pairs, self.similarity_distance = int(similarity_pairs), similarity_distance
        if hasattr(router, "bind_experts"):  # a router whose scores read the experts (AttentionRouter)
            router.bind_experts(experts)
        self._assigned: tuple[Tensor, Tensor] | None = None
        self.dropped_fraction: Tensor | None = None
        self.last_routing: Routing | None = None
        self.last_losses: dict[str, Tensor] = {}

    def expert(self, index: int, x: Tensor) -> Tensor:
        """Routed expert ``index`` on rows ``x [N, d_model]``."""
        return self.experts.expert(index, x)

    def _grouped(self, x: Tensor, weights: Tensor, indices: Tensor) -> Tensor:
        """Dropless token choice: the (token, expert) pairs sorted by expert through ``compute.pairs``."""
        expert_ids, order = indices.reshape(-1).sort(stable=True)  # sorted ids and their order in one pass
        token = order // indices.shape[-1]
        outputs = self.compute.pairs(self.experts, x.index_select(0, token), expert_ids)
        outputs = outputs * weights.reshape(-1, 1).index_select(0, order).to(outputs.dtype)
        return outputs.new_zeros(x.shape).index_add_(0, token, outputs)  # in place into a fresh buffer: no copy

    def _with_capacity(self, x: Tensor, routing: Routing) -> Tensor:
        """Token choice with a capacity: fixed buffers per expert through ``compute.slots``; pairs beyond it drop."""
        tokens, k = routing.selected.shape
        capacity = capacity_of(tokens, k, self.num_experts, self.capacity_factor)
        valid = None if routing.mask is None else routing.mask.repeat(k)
        slots, kept = capacity_slots(routing.selected.t().reshape(-1), self.num_experts, capacity, valid)
        pair_token = torch.arange(tokens, device=x.device).repeat(k)
        rows = gather_into_slots(x, pair_token, slots, self.num_experts * capacity)  # [E * C, D]
        outputs = self.compute.slots(self.experts, rows, self.num_experts, capacity)
        pair_outputs = read_from_slots(outputs, slots)  # [k * T, D]
        dropped = ~kept if valid is None else valid & ~kept
        routing.dropped = dropped.view(k, tokens).t()
        counted = dropped.numel() if valid is None else valid.sum().clamp_min(1)
        self.dropped_fraction = dropped.sum() / counted
        return (pair_outputs.view(k, tokens, -1) * routing.weights.t().unsqueeze(-1).to(pair_outputs.dtype)).sum(0)

    def _expert_choice(self, x: Tensor, route: Route) -> Tensor:
        tokens = route.expert_tokens  # [E, c]
        rows = x.index_select(0, tokens.reshape(-1)).view(*tokens.shape, -1)
        outputs = self.experts.batched(rows)
        outputs = outputs * route.expert_gates.unsqueeze(-1).to(outputs.dtype)
        return outputs.new_zeros(x.shape).index_add(0, tokens.reshape(-1), outputs.reshape(-1, x.shape[-1]))

    def _soft(self, x: Tensor, route: Route) -> Tensor:
        batch, seq_len, slots = route.dispatch.shape
        inputs = torch.einsum("bnm,bnd->bmd", route.dispatch.to(x.dtype), x.view(batch, seq_len, -1))  # [B, E * S, D]
        per_expert = inputs.view(batch, self.num_experts, -1, x.shape[-1]).transpose(0, 1)  # [E, B, S, D]
        outputs = self.experts.batched(per_expert.reshape(self.num_experts, -1, x.shape[-1]))
        outputs = outputs.view(self.num_experts, batch, -1, x.shape[-1]).transpose(0, 1).reshape(batch, slots, -1)
        return torch.einsum("bnm,bmd->bnd", route.combine.to(outputs.dtype), outputs).reshape(x.shape)

    def _run(self, x: Tensor, route: Route) -> Tensor:
        routing = route.routing
        if self.router.kind == "soft":
            return self._soft(x, route)
        if self.router.kind == "expert":
            return self._expert_choice(x, route)
        if self.capacity_factor > 0:
            return self._with_capacity(x, routing)
        if self.k == self.num_experts and self.compute.dense:
            dense = torch.zeros_like(routing.probs).scatter(-1, routing.selected, routing.weights)
            outputs = self.experts.dense(x)
            return torch.einsum("te,etd->td", dense.to(outputs.dtype), outputs)
        return self._grouped(x, routing.weights, routing.selected)

    def assign(self, selected: Tensor, weights: Tensor) -> None:
        """Route the next call's tokens to ``selected [T, k]`` with combine ``weights [T, k]`` (hard-EM
        allocation; token-choice routers only). The router still runs (its probabilities and logits
        feed the losses); only its selection and weights are replaced, for that one call."""
        if self.router.kind != "token":
            raise ValueError(f"assign applies to token-choice routers, not to kind {self.router.kind!r}")
        if selected.dim() != 2 or selected.shape[-1] != self.k or weights.shape != selected.shape:
            raise ValueError(f"selected and weights must have shape [T, k={self.k}], got {list(selected.shape)} "
                             f"and {list(weights.shape)}")
        self._assigned = (selected, weights)

    def similarity_terms(self, tokens: Tensor, routing: Routing) -> tuple[Tensor, Tensor]:
        """The pair-sampled sample-similarity terms ``(same, different)`` of a call's router inputs
        ``tokens [T, d_model]`` and routing (:func:`~gmnn.nn.functional.regularizers.pair_similarity_terms`)."""
        first, second = sample_token_pairs(tokens.shape[0], self.similarity_pairs, tokens.device)
        weight = None if routing.mask is None else (routing.mask[first] & routing.mask[second])
        return pair_similarity_terms(routing.probs, tokens, first, second, self.similarity_distance, weight)

    def losses(self, routing: Routing, seq_len: int | None = None, tokens: Tensor | None = None) -> dict[str, Tensor]:
        """The unweighted balancing terms of a routing (those with a weight > 0; ``balance`` and
        ``sequence_balance`` for token choice only). ``seq_len``: tokens per sequence (``None``: one sequence);
        ``tokens``: the router's inputs ``[T, d_model]``, for the sample-similarity terms."""
        out = {}
        if tokens is not None and (self.similarity_same_weight > 0 or self.similarity_different_weight > 0):
            same, different = self.similarity_terms(tokens, routing)
            if self.similarity_same_weight > 0:
                out["similarity_same"] = same
            if self.similarity_different_weight > 0:
                out["similarity_different"] = -different
        if self.balance_weight > 0 and self.router.kind == "token":
            out["balance"] = routed_load_balancing_loss(routing.probs, routing.selected, routing.mask,
                                                        self.balance_scope == "global")
        if self.sequence_balance_weight > 0 and self.router.kind == "token":
            seq_len = routing.probs.shape[0] if seq_len is None else seq_len
            mask = None if routing.mask is None else routing.mask.view(-1, seq_len)
            out["sequence_balance"] = sequence_balance_loss(routing.probs.view(-1, seq_len, self.num_experts),
                                                            routing.selected.view(-1, seq_len, self.k), mask)
        if self.importance_weight > 0:
            out["importance"] = importance_of_weights(routing)
        if self.z_weight > 0 and routing.logits is not None:
            out["z"] = masked_z_loss(routing.logits, routing.mask)
        return out

    def forward(self, x: Tensor, mask: Tensor | None = None, return_routing: bool = False):
        """Route tokens ``x [..., d_model]``; returns ``(output [..., d_model], aux_loss)`` (``, routing``).

        Args:
            x: Tokens ``[..., d_model]`` (Soft MoE: ``[..., seq_len, d_model]``, mixed per sequence).
            mask: ``x.shape[:-1]`` bool, ``True`` for the tokens that count (``None``: all).
            return_routing: Also return the call's :class:`Routing` with gradients.
        """
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape [..., d_model={self.d_model}], got {list(x.shape)}")
        if mask is not None and mask.shape != x.shape[:-1]:
            raise ValueError(f"mask must have shape {list(x.shape[:-1])}, got {list(mask.shape)}")
        tokens = x.reshape(-1, self.d_model)
        flat_mask = None if mask is None else mask.reshape(-1).bool()
        self.dropped_fraction = None
        route = self.router(tokens, flat_mask, x.shape[-2] if x.dim() > 1 else 1)
        if self._assigned is not None:
            selected, weights = self._assigned
            self._assigned = None
            if selected.shape[0] != tokens.shape[0]:
                raise ValueError(f"assign: {selected.shape[0]} assigned tokens for a call of {tokens.shape[0]}")
            if flat_mask is not None:
                weights = weights * flat_mask.unsqueeze(-1).to(weights.dtype)
            route.routing.selected, route.routing.weights = selected.to(tokens.device), weights.to(route.routing.probs.dtype)
        out = self._run(tokens, route)
        if self.shared is not None:
            out = out + self.shared(tokens)
        losses = self.losses(route.routing, x.shape[-2] if x.dim() > 2 else None, tokens)
        weight = {"balance": self.balance_weight, "importance": self.importance_weight, "z": self.z_weight,
                  "sequence_balance": self.sequence_balance_weight, "similarity_same": self.similarity_same_weight,
                  "similarity_different": self.similarity_different_weight}
        aux = sum((weight[name] * value for name, value in losses.items()), tokens.new_zeros(()))
        route.routing.losses = losses
        self.last_losses = {name: value.detach() for name, value in losses.items()}
        self.last_routing = _detached(route.routing, self.last_losses)
        if return_routing:
            return out.view(x.shape), aux, route.routing
        return out.view(x.shape), aux


def _detached(routing: Routing, losses: dict[str, Tensor]) -> Routing:
    fields = {f.name: getattr(routing, f.name) for f in dataclasses.fields(routing)}
    fields = {name: value.detach() if isinstance(value, Tensor) else value for name, value in fields.items()}
    return Routing(**{**fields, "losses": losses})
