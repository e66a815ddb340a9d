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
from gmnn.nn.moe.layer import MoELayer
from gmnn.pl import LightningModule
from gmnn.validation import check_choice, check_non_negative, check_positive_int

Router = Literal["softmax", "sigmoid", "expert_choice"]
ROUTERS: tuple[str, ...] = get_args(Router)


def build_moe_ffn(d_model: int, hidden: int, num_experts: int, k: int, router: str, normalize: bool | None,
                  balance_weight: float, balance_rate: float, z_weight: float, shared_experts: int,
                  capacity_factor: float) -> MoELayer:
    """One :class:`~gmnn.nn.MoELayer` FFN from primitive settings (the routers of :mod:`gmnn.nn.moe.routers`).

    ``softmax`` top-k without extras uses the layer's own constructor
    ``MoELayer(d_model, hidden, num_experts, k)``; every other setting builds
    the router / shared-expert modules (``MoELayer(router=..., experts=..., shared=...)``).
    """
    plain = router == "softmax" and normalize is None and balance_rate == 0 and shared_experts == 0
    if plain:
        return MoELayer(d_model, hidden, num_experts, k, capacity_factor=capacity_factor,
                        balance_weight=balance_weight, z_weight=z_weight)
    from gmnn.nn.moe.experts import MLPExperts, SharedExperts
    from gmnn.nn.moe.routers import ExpertChoiceRouter, SigmoidRouter, SoftmaxTopKRouter

    if router == "expert_choice":
        module = ExpertChoiceRouter(d_model, num_experts, capacity_factor=float(k), bias=True)
        capacity_factor = 0.0
    else:
        kind = SoftmaxTopKRouter if router == "softmax" else SigmoidRouter
        module = kind(d_model, num_experts, k, normalize=normalize, bias=True, balance_rate=balance_rate)
    shared = SharedExperts(d_model, hidden, shared_experts, activation="gelu", gated=False) if shared_experts else None
    return MoELayer(router=module, experts=MLPExperts(d_model, hidden, num_experts), shared=shared,
                    capacity_factor=capacity_factor, balance_weight=balance_weight, z_weight=z_weight)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with :func:`torch.nn.functional.scaled_dot_product_attention`."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class MoEBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + moe(ln(x))``; returns ``(x, aux_loss)``."""

    def __init__(self, d_model: int, num_heads: int, ffn: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, num_heads)
        self.ffn = ffn

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.attention(self.norm1(x))
        out, aux = self.ffn(self.norm2(x))
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
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        decoupled_weight_decay: Decoupled weight decay (AdamW).
        scheduler: ``"none"``, ``"cosine"`` or ``"onecycle"`` (stepped every batch).
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
        for name, value in [("balance_weight", balance_weight), ("balance_rate", balance_rate),
                            ("z_weight", z_weight), ("capacity_factor", capacity_factor),
                            ("shared_experts", shared_experts)]:
            check_non_negative(name, value)
        check_optimizer_args(lr, weight_decay, scheduler)
        self.input_shape = (int(input_shape[0]),)
        self.num_classes, self.num_experts = num_classes, num_experts
        self.embedding = nn.Embedding(num_classes, d_model)
        self.position = nn.Embedding(self.input_shape[0], d_model)
        self.blocks = nn.ModuleList(
            MoEBlock(d_model, num_heads, build_moe_ffn(d_model, expert_hidden, num_experts, k, router, normalize,
                                                       balance_weight, balance_rate, z_weight, int(shared_experts),
                                                       capacity_factor))
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Next-token logits ``[B, L, V]`` of ``tokens [B, L]`` and the summed auxiliary loss."""
        if tokens.dim() != 2 or not 1 <= tokens.shape[1] <= self.input_shape[0]:
            raise ValueError(f"tokens must have shape [batch, length <= {self.input_shape[0]}], got {list(tokens.shape)}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embedding(tokens) + self.position(positions)
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
