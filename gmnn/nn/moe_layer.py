"""A drop-in sparse mixture-of-experts feed-forward layer for token tensors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmnn.nn.dispatch import capacity_of, capacity_slots, gather_into_slots, group_by_expert, read_from_slots
from gmnn.nn.grouped import can_group, grouped_linear
from gmnn.nn.regularizers import router_z_loss
from gmnn.nn.stacked import linear_grouped, linear_shared
from gmnn.validation import check_non_negative, check_positive_int


def routed_load_balancing_loss(router_probs: Tensor, indices: Tensor) -> Tensor:
    """Switch load-balancing loss ``E * sum_i f_i P_i`` over the routed pairs (Fedus et al., 2021).

    Unlike :func:`gmnn.nn.regularizers.load_balancing_loss` (top-1 by argmax of
    the gate), ``f_i`` is the fraction of the actually routed (token, expert)
    pairs sent to expert i: k per token, after router noise. ``P_i`` is the
    mean router probability of expert i. Equals 1 under uniform routing.

    Args:
        router_probs: Softmax router probabilities ``[T, E]``.
        indices: Routed experts ``[T, k]``.
    """
    flat = indices.reshape(-1)
    counts = router_probs.new_zeros(router_probs.shape[-1])
    fraction = counts.scatter_add(0, flat, torch.ones_like(flat, dtype=router_probs.dtype)) / flat.numel()
    return router_probs.shape[-1] * (fraction * router_probs.mean(dim=0)).sum()


class MoELayer(nn.Module):
    """Sparse mixture-of-experts feed-forward layer (Shazeer et al., 2017; Fedus et al., 2021).

    Replaces a transformer FFN: tokens ``[..., d_model]`` are routed by a
    linear router to their top-``k`` experts, each an MLP
    ``d_model -> hidden -> d_model`` (GELU); the output is the sum of the
    routed experts' outputs weighted by the router softmax renormalised over
    the k. Only routed (token, expert) pairs are computed: grouped by expert
    (exact; with ``torch._grouped_mm`` where this PyTorch build supports it,
    without a loop over experts or a host sync, else a loop over the
    non-empty groups after one host sync) or, with ``capacity_factor > 0``, in fixed
    per-expert buffers of ``ceil(capacity_factor * T * k / E)`` rows (no host
    sync, ``torch.compile`` friendly). A pair beyond its expert's capacity is
    dropped: it adds nothing, so a surrounding residual connection carries the
    token; ``dropped_fraction`` holds the fraction dropped in the last call.
    With ``k == num_experts`` the layer is the dense mixture (all experts as
    batched matmuls).

    ``forward`` returns ``(output [..., d_model], aux_loss)`` with
    ``aux_loss = balance_weight * routed_load_balancing_loss + z_weight * router_z_loss``.

    Args:
        d_model: Token width.
        hidden: Hidden width of each expert.
        num_experts: Number of experts E.
        k: Experts per token, ``1 <= k <= num_experts``.
        noise_std: Std of Gaussian noise added to the router logits while training (0: none).
        capacity_factor: 0 for no capacity limit, else a factor > 0 (e.g. 1.25).
        balance_weight: Weight of the Switch load-balancing loss.
        z_weight: Weight of the router z-loss.
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        num_experts: int,
        k: int = 2,
        noise_std: float = 0.0,
        capacity_factor: float = 0.0,
        balance_weight: float = 1e-2,
        z_weight: float = 1e-3,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("hidden", hidden)
        check_positive_int("num_experts", num_experts)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
            raise ValueError(f"k must be an integer in [1, num_experts={num_experts}], got {k!r}")
        for name, value in [("noise_std", noise_std), ("capacity_factor", capacity_factor),
                            ("balance_weight", balance_weight), ("z_weight", z_weight)]:
            check_non_negative(name, value)
        self.d_model, self.num_experts, self.k = d_model, num_experts, k
        self.noise_std, self.capacity_factor = float(noise_std), float(capacity_factor)
        self.balance_weight, self.z_weight = float(balance_weight), float(z_weight)
        self.router = nn.Linear(d_model, num_experts)
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.b2 = nn.Parameter(torch.empty(num_experts, d_model))
        for weight, bias, fan_in in [(self.w1, self.b1, d_model), (self.w2, self.b2, hidden)]:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)
        self.dropped_fraction: Tensor | None = None

    def expert(self, index: int, x: Tensor) -> Tensor:
        """Expert ``index`` on rows ``x [N, d_model]``."""
        return F.linear(F.gelu(F.linear(x, self.w1[index], self.b1[index])), self.w2[index], self.b2[index])

    def _dense(self, x: Tensor, weights: Tensor) -> Tensor:
        outputs = linear_grouped(F.gelu(linear_shared(x, self.w1, self.b1)), self.w2, self.b2)  # [E, T, D]
        return torch.einsum("te,etd->td", weights, outputs)

    def _grouped(self, x: Tensor, weights: Tensor, indices: Tensor) -> Tensor:
        flat = indices.reshape(-1)
        if can_group(x, self.d_model, self.w1.shape[1]):  # no loop over experts, no host sync
            order = flat.argsort(stable=True)
            expert = flat.index_select(0, order)
            counts = torch.zeros(self.num_experts, dtype=torch.int32, device=x.device)
            offsets = counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32)).cumsum(0, dtype=torch.int32)
            token = order // self.k
            hidden = F.gelu(grouped_linear(x.index_select(0, token), self.w1, self.b1, offsets, expert))
            outputs = grouped_linear(hidden, self.w2, self.b2, offsets, expert)
        else:  # one group per expert: the group sizes are read on the host
            order, counts = group_by_expert(flat, self.num_experts)
            token = order // self.k
            groups = x.index_select(0, token).split(counts)
            outputs = torch.cat([self.expert(e, rows) for e, rows in enumerate(groups) if counts[e] > 0])
        outputs = outputs * weights.reshape(-1, 1).index_select(0, order)
        return x.new_zeros(x.shape).index_add(0, token, outputs)

    def _with_capacity(self, x: Tensor, weights: Tensor, indices: Tensor) -> Tensor:
        tokens = x.shape[0]
        capacity = capacity_of(tokens, self.k, self.num_experts, self.capacity_factor)
        slots, kept = capacity_slots(indices.t().reshape(-1), self.num_experts, capacity)
        pair_token = torch.arange(tokens, device=x.device).repeat(self.k)
        rows = gather_into_slots(x, pair_token, slots, self.num_experts * capacity).view(self.num_experts, capacity, -1)
        outputs = linear_grouped(F.gelu(linear_grouped(rows, self.w1, self.b1)), self.w2, self.b2)
        pair_outputs = read_from_slots(outputs.reshape(self.num_experts * capacity, -1), slots)  # [k * T, D]
        self.dropped_fraction = 1 - kept.float().mean()
        return (pair_outputs.view(self.k, tokens, -1) * weights.t().unsqueeze(-1)).sum(0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Route tokens ``x [..., d_model]``; returns ``(output [..., d_model], aux_loss)``."""
        if x.dim() < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape [..., d_model={self.d_model}], got {list(x.shape)}")
        tokens = x.reshape(-1, self.d_model)
        logits = self.router(tokens)
        noisy = logits + self.noise_std * torch.randn_like(logits) if self.training and self.noise_std > 0 else logits
        top_logits, indices = noisy.topk(self.k, dim=-1)
        weights = torch.softmax(top_logits, dim=-1)
        self.dropped_fraction = None
        if self.k == self.num_experts:
            out = self._dense(tokens, torch.softmax(noisy, dim=-1))
        elif self.capacity_factor > 0:
            out = self._with_capacity(tokens, weights, indices)
        else:
            out = self._grouped(tokens, weights, indices)
        aux = self.balance_weight * routed_load_balancing_loss(torch.softmax(logits, dim=-1), indices)
        aux = aux + self.z_weight * router_z_loss(logits)
        return out.view(x.shape), aux
