"""Routers of a token MoE layer: scores -> selection -> combine weights, one module each.

Every router maps flattened tokens ``x [T, d_model]`` (and an optional
``mask [T]`` of the tokens that count) to a :class:`Route`: the
:class:`~gmnn.nn.moe.record.Routing` record with live tensors, plus what
its kind of computation needs. ``kind`` tells :class:`~gmnn.nn.MoELayer` how
to run the experts:

* ``"token"`` (token choice): every token picks ``k`` experts
  (:class:`SoftmaxTopKRouter`, :class:`NoisyTopKRouter`, :class:`SigmoidRouter`);
  run grouped by expert (dropless) or in capacity buffers.
* ``"expert"`` (:class:`ExpertChoiceRouter`): every expert picks its tokens.
* ``"soft"`` (:class:`SoftMoERouter`): experts see weighted averages of tokens.

Token-choice routers share group-limited selection (DeepSeek-V3) and
auxiliary-loss-free balancing (:class:`TokenChoiceRouter`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from gmnn.nn.moe.record import Routing
from gmnn.validation import check_choice, check_non_negative, check_positive, check_positive_int


def _ratio_or_log_space(values: Tensor, log_values: Tensor) -> Tensor:
    """``values / values.sum(-1)`` for non-negative ``values``, as ``softmax(log_values)`` where the sum is below
    the smallest normal number of its dtype (0 / 0, or a subnormal divisor): finite and exact in both branches,
    with finite gradients."""
    total = values.sum(-1, keepdim=True)
    underflow = total < torch.finfo(total.dtype).tiny
    return torch.where(underflow, torch.softmax(log_values, dim=-1), values / total.masked_fill(underflow, 1.0))


@dataclass
class Route:
    """A router's answer for one call: the routing record (live tensors) and kind-specific plans.

    Attributes:
        routing: The record (probabilities, selected experts, combine weights ...), with gradients.
        expert_tokens: Expert choice: the tokens each expert took ``[E, c]``.
        expert_gates: Expert choice: their combine weights ``[E, c]``.
        dispatch: Soft MoE: dispatch weights ``[B, N, E * S]`` (softmax over the N tokens of a sequence).
        combine: Soft MoE: combine weights ``[B, N, E * S]`` (softmax over the slots).
    """

    routing: Routing
    expert_tokens: Tensor | None = None
    expert_gates: Tensor | None = None
    dispatch: Tensor | None = None
    combine: Tensor | None = None


class Router(nn.Module):
    """Base of all routers: a linear projection ``d_model -> E`` (``weight [E, d_model]``, optional ``bias``).

    Args:
        d_model: Token width.
        num_experts: Number of experts E.
        k: Experts per token (token choice) or the average of it (expert choice).
        bias: Whether the projection has a bias.
    """

    kind: ClassVar[str] = "token"

    def __init__(self, d_model: int, num_experts: int, k: int = 2, bias: bool = False) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("num_experts", num_experts)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
            raise ValueError(f"k must be an integer in [1, num_experts={num_experts}], got {k!r}")
        self.d_model, self.num_experts, self.k = d_model, num_experts, k
        bound = 1 / math.sqrt(d_model)
        self.weight = nn.Parameter(torch.empty(num_experts, d_model).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_experts).uniform_(-bound, bound)) if bias else None

    def logits(self, x: Tensor) -> Tensor:
        """Raw router logits ``[T, E]``, in the projection's dtype (a float32 router on bfloat16 tokens, as DeepSeek-V3)."""
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, seq_len: int | None = None) -> Route:
        """Route ``x [T, d_model]``; ``mask [T]`` bool marks the tokens that count; ``seq_len`` (Soft MoE) splits T."""
        raise NotImplementedError


class TokenChoiceRouter(Router):
    """Every token picks its top-``k`` experts by score; the combine weights are the picked scores.

    Subclasses define the scores (:meth:`scores`). Shared options:

    * ``normalize``: divide the k weights by their sum (in log space where
      every picked score is exactly 0, so no 0 / 0). Default (``None``):
      only for ``k > 1``. With ``k = 1`` and ``normalize=False`` the expert
      output is scaled by the router probability, as Switch Transformers
      (Fedus et al., 2021), so the task loss trains the router (a renormalised
      single weight is 1 and gives it no gradient).
    * group-limited routing: experts fall into ``num_groups`` groups and a
      token picks its k experts within its ``topk_groups`` best groups. A
      group scores the sum of its two best experts (``group_score="top2"``,
      node-limited routing of DeepSeek-V3, 2024) or its best expert
      (``"max"``, device-limited routing of DeepSeek-V2, 2024).
    * ``score_bias``: a per-expert ``selection_bias`` buffer added to the
      scores for the selection only (DeepSeek-V3's ``e_score_correction_bias``,
      ERNIE 4.5's ``moe_statics``), also without the balancing updates below.
    * ``norm_min``: the normaliser of the k weights is at least this (ERNIE 4.5's ``moe_norm_min``).
    * auxiliary-loss-free balancing (Wang et al., 2024; DeepSeek-V3): with
      ``balance_rate > 0`` a per-expert ``selection_bias`` buffer (saved in
      the state dict) is added to the scores for the selection only, never to
      the weights. While training, the router counts each expert's tokens;
      :meth:`update_bias` moves the bias by ``balance_rate * sign(mean load - load)``
      and re-centres it, outside the gradient. With ``balance_update="forward"``
      it runs at the end of every training forward, else call it yourself
      (e.g. once per optimizer step). Under ``torch.distributed`` it sums the
      counts over ranks with ``all_reduce``, so every rank applies the same
      update: call it at the same point on every rank.

    Args:
        d_model: Token width.
        num_experts: Number of experts E.
        k: Experts per token.
        normalize: Renormalise the k weights (default: ``k > 1``).
        scale: Factor on the weights (DeepSeek's ``routed_scaling_factor``).
        bias: Whether the router projection has a bias.
        num_groups: Expert groups for group-limited routing (1: none).
        topk_groups: Groups a token may use.
        balance_rate: Rate of the aux-loss-free bias update (0: off).
        balance_update: ``"forward"`` or ``"manual"``.
        group_score: ``"top2"`` or ``"max"``: how a group is scored.
        score_bias: Keep a ``selection_bias`` buffer even without ``balance_rate``.
        norm_min: Lower bound of the normaliser of the k weights (0: none).
    """

    def __init__(self, d_model: int, num_experts: int, k: int = 2, normalize: bool | None = None, scale: float = 1.0,
                 bias: bool = False, num_groups: int = 1, topk_groups: int = 1, balance_rate: float = 0.0,
                 balance_update: str = "forward", group_score: str = "top2", score_bias: bool = False,
                 norm_min: float = 0.0) -> None:
        super().__init__(d_model, num_experts, k, bias)
        check_positive("scale", scale)
        check_positive_int("num_groups", num_groups)
        check_positive_int("topk_groups", topk_groups)
        check_non_negative("balance_rate", balance_rate)
        check_choice("balance_update", balance_update, ("forward", "manual"))
        check_choice("group_score", group_score, ("top2", "max"))
        check_non_negative("norm_min", norm_min)
        if num_experts % num_groups:
            raise ValueError(f"num_groups must divide num_experts={num_experts}, got {num_groups}")
        if topk_groups > num_groups or k > topk_groups * (num_experts // num_groups):
            raise ValueError(f"topk_groups must be in [1, num_groups={num_groups}] with k <= topk_groups * "
                             f"{num_experts // num_groups} experts per group, got topk_groups={topk_groups}, k={k}")
        self.normalize = k > 1 if normalize is None else bool(normalize)
        self.scale, self.num_groups, self.topk_groups = float(scale), num_groups, topk_groups
        self.balance_rate, self.balance_update = float(balance_rate), balance_update
        self.group_score, self.norm_min = group_score, float(norm_min)
        keep_bias = balance_rate > 0 or score_bias
        self.register_buffer("selection_bias", torch.zeros(num_experts) if keep_bias else None)
        if balance_rate > 0:
            self.register_buffer("load", torch.zeros(num_experts), persistent=False)

    def scores(self, x: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """``(scores, probs)``: scores to select and weight by (noise included), clean probabilities for the record."""
        raise NotImplementedError

    def log_scores(self, logits: Tensor) -> Tensor:
        """Logarithms of the clean scores ``[T, E]`` (finite where the scores underflow to 0), for :meth:`_renormalize`."""
        raise NotImplementedError

    def _renormalize(self, weights: Tensor, logits: Tensor, selected: Tensor) -> Tensor:
        """The picked scores ``weights [T, k]`` divided by their sum; where the sum underflows (a selection bias
        picking experts of probability 0, sigmoid scores below float32's range), the same ratio taken in log space:
        the softmax of their :meth:`log_scores` (no 0 / 0)."""
        return _ratio_or_log_space(weights, self.log_scores(logits).gather(-1, selected))

    def _select(self, choice: Tensor) -> Tensor:
        if self.num_groups > 1:
            tokens, size = choice.shape[0], self.num_experts // self.num_groups
            grouped = choice.view(tokens, self.num_groups, size)
            best = 1 if self.group_score == "max" else min(2, size)
            group_score = grouped.topk(best, dim=-1).values.sum(-1)
            keep = group_score.topk(self.topk_groups, dim=-1).indices
            allowed = torch.zeros_like(group_score, dtype=torch.bool).scatter(1, keep, True)
            choice = choice.masked_fill(~allowed.unsqueeze(-1).expand_as(grouped).reshape_as(choice), float("-inf"))
        return choice.topk(self.k, dim=-1).indices

    def forward(self, x: Tensor, mask: Tensor | None = None, seq_len: int | None = None) -> Route:
        logits = self.logits(x)
        scores, probs = self.scores(x, logits.float())  # routing in fp32, as Mixtral / Qwen do under bf16
        biased = self.selection_bias is not None
        selected = self._select(scores + self.selection_bias if biased else scores)
        weights = scores.gather(-1, selected)
        if self.normalize and self.norm_min > 0:
            weights = weights / weights.sum(-1, keepdim=True).clamp_min(self.norm_min)
        elif self.normalize:
            weights = self._renormalize(weights, logits.float(), selected)
            if not biased:  # where the scores underflowed, top-k broke ties the log-space ratio does not follow
                weights, order = weights.sort(dim=-1, descending=True, stable=True)  # elsewhere: the identity
                selected = selected.gather(-1, order)
        if self.scale != 1.0:
            weights = weights * self.scale
        if biased:  # the bias may change the order: keep it by decreasing weight
            weights, order = weights.sort(dim=-1, descending=True)
            selected = selected.gather(-1, order)
        if self.balance_rate > 0 and self.training:
            self._count(selected, mask)
        if mask is not None:
            weights = weights * mask.unsqueeze(-1).to(weights.dtype)
        return Route(Routing(probs=probs, selected=selected, weights=weights, logits=logits, mask=mask))

    @torch.no_grad()
    def _count(self, selected: Tensor, mask: Tensor | None) -> None:
        ones = torch.ones_like(selected, dtype=self.load.dtype)
        if mask is not None:
            ones = ones * mask.unsqueeze(-1).to(ones.dtype)
        self.load.scatter_add_(0, selected.reshape(-1), ones.reshape(-1))
        if self.balance_update == "forward":
            self.update_bias()

    @torch.no_grad()
    def update_bias(self) -> None:
        """Apply the aux-loss-free update from the loads counted since the last one (all ranks alike)."""
        if self.balance_rate <= 0:
            raise RuntimeError("update_bias needs balance_rate > 0")
        load = self.load.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(load)
        self.selection_bias.add_(self.balance_rate * torch.sign(load.mean() - load))
        self.selection_bias.sub_(self.selection_bias.mean())
        self.load.zero_()


class SoftmaxTopKRouter(TokenChoiceRouter):
    """Softmax top-k (Shazeer et al., 2017; GShard; Switch for k = 1; Mixtral, Qwen-MoE).

    Scores are ``softmax(logits + noise)``; ``noise_std > 0`` adds Gaussian
    noise of that std to the logits while training. Keyword arguments as
    :class:`TokenChoiceRouter`.
    """

    def __init__(self, d_model: int, num_experts: int, k: int = 2, noise_std: float = 0.0, **kwargs) -> None:
        super().__init__(d_model, num_experts, k, **kwargs)
        check_non_negative("noise_std", noise_std)
        self.noise_std = float(noise_std)

    def noisy(self) -> bool:
        """Whether training adds noise to the logits."""
        return self.noise_std > 0

    def noise(self, x: Tensor, logits: Tensor) -> Tensor:
        """Noise added to the logits while training."""
        return self.noise_std * torch.randn_like(logits)

    def scores(self, x: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        probs = torch.softmax(logits, dim=-1)
        if not (self.training and self.noisy()):
            return probs, probs
        return torch.softmax(logits + self.noise(x, logits), dim=-1), probs

    def log_scores(self, logits: Tensor) -> Tensor:
        """``log_softmax(logits)`` (without the training noise)."""
        return torch.log_softmax(logits, dim=-1)


class NoisyTopKRouter(SoftmaxTopKRouter):
    """Noisy top-k gating with learned noise (Shazeer et al., 2017, "Outrageously Large Neural Networks").

    While training the logits get ``N(0, 1) * softplus(x W_noise)``; ``W_noise``
    starts at 0 (noise std softplus(0) = 0.69). Keyword arguments as :class:`TokenChoiceRouter`.
    """

    def __init__(self, d_model: int, num_experts: int, k: int = 2, **kwargs) -> None:
        super().__init__(d_model, num_experts, k, **kwargs)
        self.noise_weight = nn.Parameter(torch.zeros(num_experts, d_model))

    def noisy(self) -> bool:
        return True

    def noise(self, x: Tensor, logits: Tensor) -> Tensor:
        return torch.randn_like(logits) * F.softplus(F.linear(x, self.noise_weight))


class SigmoidRouter(TokenChoiceRouter):
    """Sigmoid scores, independent per expert (DeepSeek-V3, 2024).

    Weights are the picked ``sigmoid(logits)``, renormalised over the k by
    default and times ``scale``; the record's ``probs`` are the sigmoid
    scores normalised per token (as ``softmax(logsigmoid(logits))`` where their sum underflows: every
    logit below about -87 in float32). Combine with ``num_groups`` / ``topk_groups``
    and ``balance_rate`` for DeepSeek-V3's routing. Arguments as :class:`TokenChoiceRouter`.
    """

    def scores(self, x: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        scores = torch.sigmoid(logits)
        return scores, _ratio_or_log_space(scores, F.logsigmoid(logits))

    def log_scores(self, logits: Tensor) -> Tensor:
        """``logsigmoid(logits)``."""
        return F.logsigmoid(logits)


class ExpertChoiceRouter(Router):
    """Expert choice: every expert takes its top-``c`` tokens (Zhou et al., 2022, "Mixture-of-Experts with Expert Choice Routing").

    Scores are ``softmax(logits)`` over experts; expert e takes the ``c = ceil(capacity_factor * T / E)``
    tokens of the call with the highest score for e and weights each by that
    score. Perfectly balanced by construction and of static shapes (no host
    sync, ``torch.compile`` friendly), but a token may get any number of
    experts, none included (the residual carries it). The record's
    ``selected`` / ``weights`` are ``[T, E]``, ``-1`` / 0 at empty slots.

    Causal language models: a token's experts depend on the other tokens of
    the call, future ones included, so training leaks information from the
    future and autoregressive decoding (one token at a time) routes
    differently from training. Use it for encoders or non-causal inputs.

    Args:
        d_model: Token width.
        num_experts: Number of experts E.
        capacity_factor: Average experts per token (the paper's c; 2 matches top-2 compute).
        bias: Whether the router projection has a bias.
    """

    kind = "expert"

    def __init__(self, d_model: int, num_experts: int, capacity_factor: float = 2.0, bias: bool = False) -> None:
        check_positive("capacity_factor", capacity_factor)
        super().__init__(d_model, num_experts, max(1, min(num_experts, round(capacity_factor))), bias)
        self.capacity_factor = float(capacity_factor)

    def capacity(self, tokens: int) -> int:
        """Tokens per expert ``c`` for a call of ``tokens`` tokens."""
        return max(1, min(tokens, math.ceil(self.capacity_factor * tokens / self.num_experts)))

    def forward(self, x: Tensor, mask: Tensor | None = None, seq_len: int | None = None) -> Route:
        logits = self.logits(x)
        probs = torch.softmax(logits.float(), dim=-1)
        tokens = x.shape[0]
        choice = probs.t() if mask is None else probs.t().masked_fill(~mask, -1.0)
        picked, expert_tokens = choice.topk(self.capacity(tokens), dim=-1)  # [E, c]
        valid = picked >= 0  # not padding
        gates = probs.t().gather(1, expert_tokens) * valid.to(probs.dtype)
        dense = torch.zeros_like(probs.t()).scatter(1, expert_tokens, gates).t()  # [T, E]
        chosen = torch.zeros_like(probs.t(), dtype=torch.bool).scatter(1, expert_tokens, valid).t()
        order = dense.masked_fill(~chosen, -1.0).argsort(dim=-1, descending=True)
        selected = order.where(chosen.gather(-1, order), -1)
        routing = Routing(probs=probs, selected=selected, weights=dense.gather(-1, order), logits=logits, mask=mask)
        return Route(routing, expert_tokens=expert_tokens, expert_gates=gates)


class SoftMoERouter(Router):
    """Soft MoE: experts process weighted averages of a sequence's tokens (Puigcerver et al., 2023, "From Sparse to Soft Mixtures of Experts").

    Each expert has ``slots`` slots, each with a learned embedding ``phi``.
    For a sequence ``X [N, d_model]``, logits ``X phi [N, E * S]``; a slot's
    input is the average of the tokens weighted by the softmax over tokens
    (dispatch), a token's output the average of the slot outputs weighted by
    the softmax over slots (combine). Differentiable, no token dropped, no
    balancing loss needed. Every token sees the whole sequence, so it is not
    causal: for encoders / vision, not for autoregressive decoders. The
    record's ``probs`` are the combine weights summed per expert, ``logits``
    their log-sum-exp over slots; ``selected`` is ``None``.

    Args:
        d_model: Token width.
        num_experts: Number of experts E.
        slots: Slots per expert S.
        normalize: L2-normalise tokens and slot embeddings, with a learned scale (the paper's large-width recipe).
    """

    kind = "soft"

    def __init__(self, d_model: int, num_experts: int, slots: int = 1, normalize: bool = False) -> None:
        super().__init__(d_model, num_experts, 1, bias=False)
        check_positive_int("slots", slots)
        self.slots, self.normalize = slots, bool(normalize)
        del self.weight
        self.phi = nn.Parameter(torch.randn(d_model, num_experts * slots) / math.sqrt(d_model))
        self.phi_scale = nn.Parameter(torch.ones(())) if normalize else None

    def logits(self, x: Tensor) -> Tensor:
        """Slot logits ``[..., E * S]``."""
        if self.phi_scale is None:
            return x @ self.phi
        return F.normalize(x, dim=-1) @ (self.phi_scale * F.normalize(self.phi, dim=0))

    def forward(self, x: Tensor, mask: Tensor | None = None, seq_len: int | None = None) -> Route:
        tokens = x.shape[0]
        seq_len = tokens if seq_len is None else seq_len
        if seq_len < 1 or tokens % seq_len:
            raise ValueError(f"seq_len must divide the {tokens} tokens, got {seq_len}")
        logits = self.logits(x).float().view(tokens // seq_len, seq_len, -1)  # [B, N, E * S]
        combine = torch.softmax(logits, dim=-1)
        if mask is None:
            dispatch = torch.softmax(logits, dim=1)
        else:
            keep = mask.view(tokens // seq_len, seq_len, 1)
            dispatch = torch.softmax(logits.masked_fill(~keep, torch.finfo(logits.dtype).min), dim=1) * keep
            combine = combine * keep
        per_expert = logits.view(tokens, self.num_experts, self.slots)
        routing = Routing(probs=combine.view(tokens, self.num_experts, self.slots).sum(-1), selected=None,
                          logits=per_expert.logsumexp(-1), mask=mask)
        return Route(routing, dispatch=dispatch, combine=combine)
