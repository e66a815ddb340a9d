"""A small causal transformer language model with :class:`~gmnn.nn.MoELayer` feed-forward layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmnn.checkpoints.hooks import CheckpointHooks
from gmnn.models.checks import check_labels
from gmnn.models.guards import StepGuards
from gmnn.models.optim import AdamOptimizer, Scheduler, check_optimizer_args
from gmnn.models.step_log import StageSteps, log_options
from gmnn.nn.functional.regularizers import DISTANCES, allocation_loss
from gmnn.nn.functional.temperature import check_temperature_schedule, scheduled_temperature
from gmnn.nn.moe.layer import MoELayer
from gmnn.pl import LightningModule
from gmnn.validation import check_choice, check_non_negative, check_positive, check_positive_int

Router = Literal["softmax", "sigmoid", "expert_choice", "attention"]
ROUTERS: tuple[str, ...] = get_args(Router)
AttentionKeys = Literal["learned", "expert_hidden"]
ATTENTION_KEYS: tuple[str, ...] = get_args(AttentionKeys)
Distance = Literal["euclidean", "cosine"]
ExpertType = Literal["gelu", "swiglu"]
EXPERT_TYPES: tuple[str, ...] = get_args(ExpertType)
Norm = Literal["layernorm", "rmsnorm"]
NORMS: tuple[str, ...] = get_args(Norm)
Position = Literal["learned", "rope"]
POSITIONS: tuple[str, ...] = get_args(Position)


def build_moe_ffn(d_model: int, hidden: int, num_experts: int, k: int, router: str, normalize: bool | None,
                  balance_weight: float, balance_rate: float, z_weight: float, shared_experts: int,
                  capacity_factor: float, *, router_options: dict[str, Any] | None = None,
                  layer_options: dict[str, Any] | None = None, expert_type: str = "gelu") -> MoELayer:
    """One :class:`~gmnn.nn.MoELayer` FFN from primitive settings (the routers of :mod:`gmnn.nn.moe.routers`
    and :mod:`gmnn.nn.moe.specialization`).

    ``softmax`` top-k without extras uses the layer's own constructor
    ``MoELayer(d_model, hidden, num_experts, k)``; every other setting builds
    the router / shared-expert modules (``MoELayer(router=..., experts=..., shared=...)``).
    ``router_options``: temperatures (``temperature``, ``expert_temperature``: a
    :class:`~gmnn.nn.moe.specialization.TemperatureSoftmaxRouter`) and, for ``router="attention"``,
    ``attention_dim`` and ``keys``; ``layer_options``: further :class:`~gmnn.nn.MoELayer` arguments
    (the sample-similarity weights). ``expert_type``: ``"gelu"`` MLP experts (2 matrices, biases) or
    ``"swiglu"`` (Mixtral's gated SiLU experts, 3 matrices, no biases; shared experts alike).
    """
    router_options, layer_options = dict(router_options or {}), dict(layer_options or {})
    from gmnn.nn.moe.experts import MLPExperts, SharedExperts, SwiGLUExperts

    check_choice("expert_type", expert_type, EXPERT_TYPES)
    swiglu = expert_type == "swiglu"
    experts = SwiGLUExperts(d_model, hidden, num_experts) if swiglu else None
    plain = router == "softmax" and normalize is None and balance_rate == 0 and shared_experts == 0 and not router_options
    if plain:
        return MoELayer(d_model, hidden, num_experts, k, capacity_factor=capacity_factor, experts=experts,
                        balance_weight=balance_weight, z_weight=z_weight, **layer_options)
    from gmnn.nn.moe.routers import ExpertChoiceRouter, SigmoidRouter, SoftmaxTopKRouter
    from gmnn.nn.moe.specialization import AttentionRouter, TemperatureSoftmaxRouter

    if router in ("expert_choice", "sigmoid") and router_options:
        raise ValueError(f"router temperatures apply to the softmax and attention routers, not to {router!r}")
    if router == "expert_choice":
        module = ExpertChoiceRouter(d_model, num_experts, capacity_factor=float(k), bias=True)
        capacity_factor = 0.0
    elif router == "attention":
        module = AttentionRouter(d_model, num_experts, k, normalize=normalize, balance_rate=balance_rate,
                                 expert_hidden=hidden, **router_options)
    elif router == "softmax" and router_options:
        module = TemperatureSoftmaxRouter(d_model, num_experts, k, normalize=normalize, bias=True,
                                          balance_rate=balance_rate, **router_options)
    else:
        kind = SoftmaxTopKRouter if router == "softmax" else SigmoidRouter
        module = kind(d_model, num_experts, k, normalize=normalize, bias=True, balance_rate=balance_rate)
    shared = None
    if shared_experts:
        shared = SharedExperts(d_model, hidden, shared_experts, activation="silu" if swiglu else "gelu", gated=swiglu)
    experts = MLPExperts(d_model, hidden, num_experts) if experts is None else experts
    return MoELayer(router=module, experts=experts, shared=shared,
                    capacity_factor=capacity_factor, balance_weight=balance_weight, z_weight=z_weight, **layer_options)


def rotary_tables(length: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(cos, sin) [length, head_dim]`` of rotary position embeddings (Su et al., 2021) in the half-split
    layout of Llama / Mixtral: frequency ``base ** (-2i / head_dim)`` on dimensions i and i + head_dim / 2."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [..., L, head_dim]`` by the tables of :func:`rotary_tables`."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with :func:`torch.nn.functional.scaled_dot_product_attention`.

    ``rope_base``: rotary position embeddings on the queries and keys with this base (``None``: none).
    ``bias``: biases on the projections.
    """

    def __init__(self, d_model: int, num_heads: int, rope_base: float | None = None, bias: bool = True) -> None:
        super().__init__()
        self.num_heads, self.rope_base = num_heads, rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.rope_base is not None:
            cos, sin = rotary_tables(length, width // self.num_heads, self.rope_base, x.device, q.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


def make_norm(norm: str, d_model: int) -> nn.Module:
    """``"layernorm"`` (with bias) or ``"rmsnorm"`` (Zhang & Sennrich, 2019; eps 1e-5 as Mixtral)."""
    check_choice("norm", norm, NORMS)
    return nn.LayerNorm(d_model) if norm == "layernorm" else nn.RMSNorm(d_model, eps=1e-5)


class MoEBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + moe(ln(x))``; returns ``(x, aux_loss)``.

    ``routing`` holds the last call's :class:`~gmnn.nn.moe.record.Routing` with gradients (for a loss on
    the router's probabilities, e.g. the hard-EM allocation fit), until the next call.
    """

    def __init__(self, d_model: int, num_heads: int, ffn: nn.Module, norm: str = "layernorm",
                 rope_base: float | None = None, attention_bias: bool = True) -> None:
        super().__init__()
        self.norm1, self.norm2 = make_norm(norm, d_model), make_norm(norm, d_model)
        self.attention = CausalSelfAttention(d_model, num_heads, rope_base, attention_bias)
        self.ffn = ffn
        self.routing = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.attention(self.norm1(x))
        out, aux, self.routing = self.ffn(self.norm2(x), return_routing=True)
        return x + out, aux


class MoETransformerLM(CheckpointHooks, StepGuards, AdamOptimizer, StageSteps, LightningModule):
    """Byte-level causal transformer LM whose feed-forward layers are MoE layers (Shazeer et al., 2017;
    Fedus et al., 2021, "Switch Transformers"; Jiang et al., 2024, "Mixtral of Experts").

    Embedding (bytes + learned positions) -> ``num_layers`` pre-norm blocks of
    causal self-attention and a :class:`~gmnn.nn.MoELayer` FFN -> layer norm
    -> output projection tied to the embedding. Batches are ``(tokens [B, L],
    targets [B, L], ...)`` (e.g. :class:`gmnn.data.MixedSourceTextDataModule`;
    extra entries such as the per-token source are for
    :class:`gmnn.callbacks.RoutingMonitor`). Training minimises the next-byte
    cross-entropy plus the layers' auxiliary losses. Logged per stage:
    ``{stage}/loss`` (the cross-entropy in nats, without the aux losses, so that
    balancing settings compare at equal footing), ``{stage}/loss_aux`` and
    ``{stage}/bits_per_byte``.

    A LightningModule with gmnn's checkpoint hooks (class and random state recorded, the class
    that wrote a checkpoint rebuilt by ``load_from_checkpoint``), step guards (NaN/inf losses)
    and optimizer (Adam with the per-step schedule); not a :class:`~gmnn.models.base.MoEModule`,
    whose experts and gate are per sample. ``MoEModule.load_from_checkpoint`` loads its checkpoints too.

    Args:
        input_shape: ``[seq_len]``, the longest sequence (linked from the data).
        num_classes: Vocabulary size (linked from the data; 256 for bytes).
        num_experts: Experts per MoE layer E.
        d_model: Token width.
        num_layers: Transformer blocks (each with an MoE FFN).
        num_heads: Attention heads (must divide ``d_model``).
        expert_hidden: Hidden width of each expert (and of each shared expert).
        k: Experts per token (expert choice: the average, its capacity factor).
        router: ``"softmax"`` (top-k of softmax scores), ``"sigmoid"`` (DeepSeek-V3 scores)
            or ``"expert_choice"`` (Zhou et al., 2022; sees the whole batch, future tokens included).
        normalize: Renormalise the k combine weights (``None``: the router's default, ``k > 1``).
        balance_weight: Weight of the Switch load-balancing loss (token choice).
        balance_rate: Rate of auxiliary-loss-free balancing by a selection bias (Wang et al., 2024; 0: off).
        z_weight: Weight of the router z-loss (Zoph et al., 2022).
        shared_experts: Experts every token uses besides the routed ones (DeepSeekMoE; 0: none).
        capacity_factor: Token-choice capacity factor (0: dropless).
        attention_dim: ``router="attention"``: width of the queries and keys.
        attention_keys: ``router="attention"``: ``"learned"`` keys per expert or ``"expert_hidden"``, keys
            from each expert's hidden layer on the token (:class:`~gmnn.nn.moe.specialization.AttentionRouter`;
            the attention gate of Krishnamurthy, Watkins & Gaertner, 2023).
        router_temperature: Softmax temperature of the softmax / attention router (1: none).
        expert_temperature: Dual temperature (Krishnamurthy, Watkins & Gaertner, 2023): the experts' combine
            weights use this temperature while training, the router's gradient ``router_temperature``
            (``None``: off; :class:`~gmnn.nn.moe.specialization.TemperatureSoftmaxRouter`).
        temperature_decay: Anneal per epoch: ``T_{e+1} = T_e / (1 + decay (e - start))``, not below
            ``temperature_min`` (:func:`~gmnn.nn.functional.temperature.scheduled_temperature`), of
            ``expert_temperature`` when it is set (as the paper's dual-temperature training) else of
            ``router_temperature``; 0: constant.
        temperature_decay_start: First epoch of the decay.
        temperature_min: Lowest annealed temperature.
        similarity_same: beta_s of the pair-sampled sample-similarity loss on every layer's router inputs
            (Krishnamurthy, Watkins & Gaertner, 2023; ``MoELayer(similarity_same_weight=...)``).
        similarity_different: beta_d of it (distant tokens to different experts).
        similarity_pairs: Token pairs drawn per layer and batch for it.
        similarity_distance: ``"euclidean"`` or ``"cosine"`` distance of the router inputs.
        allocation_steps: Hard-EM allocation for the first this many training steps (0: off): every layer
            routes each token to the k experts with the lowest next-byte loss on it, found without gradient
            by routing all tokens of that layer to one expert at a time (:meth:`expert_losses`), each with
            weight 1/k; the router is fitted to the allocation by ``allocation_weight`` times the
            cross-entropy from ``softmin(expert losses / allocation_temperature)`` to its probabilities
            (:func:`~gmnn.nn.functional.regularizers.allocation_loss`): the hard EM and the gate-less
            allocation followed by a fitted gate of Krishnamurthy & Watkins (2021, "Interpretability in
            Gated Modular Neural Networks"), at token level. Afterwards the fitted routers route.
            Dropless token-choice routers only.
        allocation_weight: Weight of the router-fit loss during the allocation steps.
        allocation_temperature: Temperature of the soft-min target of the router fit.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        decoupled_weight_decay: Decoupled weight decay (AdamW).
        scheduler: ``"none"``, ``"cosine"`` or ``"onecycle"`` (stepped every batch).
        expert_type: ``"gelu"`` MLP experts (2 matrices with biases) or ``"swiglu"`` (Mixtral's gated SiLU
            experts: 3 matrices, no biases).
        norm: ``"layernorm"`` or ``"rmsnorm"`` (Mixtral) for the blocks' and the final norm.
        position: ``"learned"`` position embeddings added to the input, or ``"rope"``: rotary embeddings
            on every attention's queries and keys (Mixtral; no position parameters).
        rope_base: Base of the rotary frequencies (Mixtral's ``rope_theta``).
        attention_bias: Biases on the attention projections (Mixtral has none).

    With ``expert_type="swiglu"``, ``norm="rmsnorm"``, ``position="rope"`` and ``attention_bias=False`` a
    block is Mixtral's decoder layer (full multi-head attention, embedding tied to the output), save the
    router's bias.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (128,),
        num_classes: int = 256,
        num_experts: int = 4,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        expert_hidden: int = 128,
        k: int = 2,
        router: Router = "softmax",
        normalize: bool | None = None,
        balance_weight: float = 1e-2,
        balance_rate: float = 0.0,
        z_weight: float = 1e-3,
        shared_experts: int = 0,
        capacity_factor: float = 0.0,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        scheduler: Scheduler = "none",
        attention_dim: int = 32,
        attention_keys: AttentionKeys = "learned",
        router_temperature: float = 1.0,
        expert_temperature: float | None = None,
        temperature_decay: float = 0.0,
        temperature_decay_start: int = 0,
        temperature_min: float = 0.05,
        similarity_same: float = 0.0,
        similarity_different: float = 0.0,
        similarity_pairs: int = 1024,
        similarity_distance: Distance = "euclidean",
        allocation_steps: int = 0,
        allocation_weight: float = 1.0,
        allocation_temperature: float = 0.05,
        expert_type: ExpertType = "gelu",
        norm: Norm = "layernorm",
        position: Position = "learned",
        rope_base: float = 1e6,
        attention_bias: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if len(input_shape) != 1:
            raise ValueError(f"input_shape must be [seq_len], got {list(input_shape)}")
        for name, value in [("input_shape[0]", int(input_shape[0])), ("num_classes", num_classes),
                            ("num_experts", num_experts), ("d_model", d_model), ("num_layers", num_layers),
                            ("num_heads", num_heads), ("expert_hidden", expert_hidden)]:
            check_positive_int(name, value)
        if d_model % num_heads:
            raise ValueError(f"num_heads must divide d_model={d_model}, got {num_heads}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
            raise ValueError(f"k must be an integer in [1, num_experts={num_experts}], got {k!r}")
        check_choice("router", router, ROUTERS)
        check_choice("expert_type", expert_type, EXPERT_TYPES)
        check_choice("norm", norm, NORMS)
        check_choice("position", position, POSITIONS)
        check_positive("rope_base", rope_base)
        for name, value in [("balance_weight", balance_weight), ("balance_rate", balance_rate),
                            ("z_weight", z_weight), ("capacity_factor", capacity_factor),
                            ("shared_experts", shared_experts)]:
            check_non_negative(name, value)
        check_optimizer_args(lr, weight_decay, scheduler)
        router_options = self._router_options()
        for name, value in [("similarity_same", similarity_same), ("similarity_different", similarity_different),
                            ("allocation_weight", allocation_weight)]:
            check_non_negative(name, value)
        check_positive_int("similarity_pairs", similarity_pairs)
        check_choice("similarity_distance", similarity_distance, DISTANCES)
        if isinstance(allocation_steps, bool) or not isinstance(allocation_steps, int) or allocation_steps < 0:
            raise ValueError(f"allocation_steps must be an integer >= 0, got {allocation_steps!r}")
        check_positive("allocation_temperature", allocation_temperature)
        if allocation_steps and (router == "expert_choice" or capacity_factor > 0):
            raise ValueError("allocation_steps needs dropless token-choice routing (not expert_choice or a capacity)")
        layer_options = {"similarity_same_weight": similarity_same, "similarity_different_weight": similarity_different,
                         "similarity_pairs": similarity_pairs, "similarity_distance": similarity_distance} \
            if similarity_same or similarity_different else {}
        self.input_shape = (int(input_shape[0]),)
        self.num_classes, self.num_experts = num_classes, num_experts
        self.embedding = nn.Embedding(num_classes, d_model)
        self.position = nn.Embedding(self.input_shape[0], d_model) if position == "learned" else None
        self.blocks = nn.ModuleList(
            MoEBlock(d_model, num_heads, build_moe_ffn(d_model, expert_hidden, num_experts, k, router, normalize,
                                                       balance_weight, balance_rate, z_weight, int(shared_experts),
                                                       capacity_factor, router_options=router_options,
                                                       layer_options=layer_options, expert_type=expert_type),
                     norm=norm, rope_base=float(rope_base) if position == "rope" else None,
                     attention_bias=bool(attention_bias))
            for _ in range(num_layers)
        )
        self.norm = make_norm(norm, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=0.02)

    def _router_options(self) -> dict[str, Any]:
        """The router temperatures and attention settings of the hyperparameters (checked); ``{}``: none."""
        hp = self.hparams
        options: dict[str, Any] = {}
        if hp.router == "attention":
            check_positive_int("attention_dim", hp.attention_dim)
            check_choice("attention_keys", hp.attention_keys, ATTENTION_KEYS)
            options.update(attention_dim=hp.attention_dim, keys=hp.attention_keys)
        start = hp.expert_temperature if hp.expert_temperature is not None else hp.router_temperature
        check_temperature_schedule(float(start), hp.temperature_decay, hp.temperature_decay_start, hp.temperature_min)
        if hp.expert_temperature is not None:
            check_temperature_schedule(float(hp.router_temperature), 0.0, 0, hp.temperature_min)
        if hp.router_temperature != 1.0 or hp.expert_temperature is not None or hp.temperature_decay > 0:
            options.update(temperature=float(hp.router_temperature), expert_temperature=hp.expert_temperature)
        return options

    def annealed_temperature(self, epoch: int) -> float:
        """The annealed temperature at ``epoch``: of the experts (dual) or of the router."""
        hp = self.hparams
        start = hp.expert_temperature if hp.expert_temperature is not None else hp.router_temperature
        return scheduled_temperature(epoch, float(start), hp.temperature_decay, hp.temperature_decay_start,
                                     hp.temperature_min)

    def on_train_epoch_start(self) -> None:
        """Step the temperature schedule (a function of the epoch: resuming needs no state)."""
        hp = self.hparams
        if hp.temperature_decay <= 0:
            return
        value = self.annealed_temperature(self.current_epoch)
        name = "expert_temperature" if hp.expert_temperature is not None else "temperature"
        for block in self.blocks:
            block.ffn.router.set_temperature(**{name: value})
        self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=1)

    def _embed(self, tokens: Tensor) -> Tensor:
        if self.position is None:  # rotary positions, inside the attention
            return self.embedding(tokens)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.embedding(tokens) + self.position(positions)

    def _next_byte_nll(self, x: Tensor, targets: Tensor) -> Tensor:
        """Per-position next-byte cross-entropy ``[B, L]`` of the last block's output ``x``."""
        logits = F.linear(self.norm(x), self.embedding.weight)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)

    @torch.no_grad()
    def expert_losses(self, tokens: Tensor, targets: Tensor) -> list[Tensor]:
        """Per layer, the next-byte loss of every token with that layer routing all tokens to each expert
        alone (weight 1), the other layers routing as their routers do: ``[B * L, E]`` per layer.

        The E-step of the hard-EM allocation (``allocation_steps``). Runs in evaluation mode (no router
        noise, no aux-loss-free bias update) and without gradient; one forward of an ``E``-times larger
        batch from each layer up. Token ``t``'s loss is measured with every token of the layer on the same
        expert, not only ``t`` (one pass per expert instead of one per token and expert).
        """
        was_training = self.training
        self.eval()
        try:
            experts, (batch, length) = self.num_experts, tokens.shape
            x = self._embed(tokens)
            losses = []
            for index, block in enumerate(self.blocks):
                k = block.ffn.k
                forced = torch.arange(experts, device=tokens.device).repeat_interleave(batch * length)
                weights = torch.zeros(forced.shape[0], k, device=tokens.device)
                weights[:, 0] = 1.0
                block.ffn.assign(forced.unsqueeze(-1).expand(-1, k).contiguous(), weights)
                h = block(x.repeat(experts, 1, 1))[0]
                for later in self.blocks[index + 1:]:
                    h = later(h)[0]
                losses.append(self._next_byte_nll(h, targets.repeat(experts, 1)).view(experts, -1).t())
                x = block(x)[0]
            for block in self.blocks:
                block.routing = None
            return losses
        finally:
            self.train(was_training)

    def allocation_step(self, batch: Any) -> Tensor:
        """A training step of the hard-EM allocation: E-step (:meth:`expert_losses`), every layer routed
        to its tokens' k lowest-loss experts (weight 1/k each), and the routers fitted to the allocation."""
        tokens, targets = batch[0], batch[1]
        scores = self.expert_losses(tokens, targets)
        for block, loss in zip(self.blocks, scores):
            k = block.ffn.k
            selected = loss.topk(k, dim=-1, largest=False).indices
            block.ffn.assign(selected, torch.full(selected.shape, 1.0 / k, device=selected.device))
        total, _ = self.shared_step(batch, "train")
        temperature = self.hparams.allocation_temperature
        fit = sum(allocation_loss(block.routing.probs.clamp_min(1e-9).log(), loss, temperature)
                  for block, loss in zip(self.blocks, scores)) / len(self.blocks)
        self.log("train/allocation_fit", fit.detach(), on_step=True, on_epoch=True, batch_size=tokens.shape[0])
        return total + self.hparams.allocation_weight * fit

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The next-byte loss plus the aux losses; during the first ``allocation_steps``, :meth:`allocation_step`."""
        if self.global_step < self.hparams.allocation_steps:
            return self.allocation_step(batch)
        return self.shared_step(batch, "train")[0]

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Next-token logits ``[B, L, V]`` of ``tokens [B, L]`` and the summed auxiliary loss."""
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.input_shape[0]:
            raise ValueError(f"tokens must have shape [batch, length <= {self.input_shape[0]}], got {list(tokens.shape)}")
        x = self._embed(tokens)
        aux = x.new_zeros(())
        for block in self.blocks:
            x, block_aux = block(x)
            aux = aux + block_aux
        return F.linear(self.norm(x), self.embedding.weight), aux

    def shared_step(self, batch: Any, stage: str) -> tuple[Tensor, Tensor]:
        """Loss of one batch ``(tokens, targets, ...)``; logs ``{stage}/loss``, ``loss_aux``, ``bits_per_byte``."""
        tokens, targets = batch[0], batch[1]
        checked = self.__dict__.setdefault("_checked_stages", set())
        if stage not in checked:  # one host sync per stage of a run
            if targets.shape != tokens.shape:
                raise ValueError(f"{stage} batch: targets must have the shape of tokens {list(tokens.shape)}, "
                                 f"got {list(targets.shape)}")
            check_labels(targets.flatten(), self.num_classes, stage)
            checked.add(stage)
        logits, aux = self(tokens)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        if stage == "train":
            self.guard_finite({"nll": nll, "aux": aux})
        opts = log_options(stage, tokens.shape[0])  # evaluation: synced, a sequence-weighted mean of the whole set
        self.log(f"{stage}/loss", nll, prog_bar=True, **opts)
        self.log_dict({f"{stage}/loss_aux": aux.detach(), f"{stage}/bits_per_byte": nll.detach() / math.log(2)}, **opts)
        return nll + aux, logits

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Next-byte probabilities and the most likely next byte of every position."""
        tokens = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = torch.softmax(self(tokens)[0], dim=-1)
        return {"probs": probs, "prediction": probs.argmax(-1)}

    def on_train_start(self) -> None:
        """Train in training mode even after ``model.eval()`` before ``fit`` (Lightning keeps the mode it finds)."""
        if not self.training:
            self.train()
