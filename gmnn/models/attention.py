"""Mixture of experts with an attention gate."""

from __future__ import annotations

from typing import Any, Literal, get_args

from torch import Tensor, nn

from gmnn.models.base import MoEModule
from gmnn.models.topk import check_top_k
from gmnn.nn.functional.combine import top_k_mixture
from gmnn.nn.mixture.gates import AttentionGate
from gmnn.nn.mixture.networks import build_network, hidden_dim_of
from gmnn.validation import check_choice, check_non_negative

QueryActivation = Literal["relu", "none"]
QUERY_ACTIVATIONS: tuple[str, ...] = get_args(QueryActivation)


class AttentionGateMoE(MoEModule):
    """Mixture of experts whose gate attends over the experts' hidden states.

    The gate network's hidden layer gives a query, each expert's hidden layer a
    key; the gate logit of expert i is ``q . k_i / sqrt(d)`` (Krishnamurthy,
    Watkins & Gaertner, 2023, "Improving Expert Specialization in Mixture of
    Experts"). Every expert runs on every sample (the keys need them); the
    mixture is dense, or over the top ``k`` experts when ``k > 0``.

    Args:
        attention_dim: Width d of the queries and keys.
        k: 0 for the dense mixture, else the number of experts mixed per sample.
        gate_gradient: With ``k > 0``: ``"residual"`` or ``"renormalize"``
            (see :class:`~gmnn.models.topk.TopKMoE`).
        query_activation: Activation of the gate's last hidden layer, the query's input:
            ``"relu"`` (gmnn's default, the gate network as built) or ``"none"`` (paper mode: the
            reference's ``gate_attn_layers`` return ``fc2(t)`` without a ReLU,
            ``aaai_2022/src/mnist/mnist_original_moe_training.py`` lines 254-257).
        **kwargs: The arguments of :class:`~gmnn.models.base.MoEModule`.
    """

    def __init__(
        self, attention_dim: int = 32, k: int = 0, gate_gradient: Literal["residual", "renormalize"] = "residual",
        query_activation: QueryActivation = "relu", **kwargs: Any,
    ) -> None:
        check_non_negative("k", k)
        check_choice("query_activation", query_activation, QUERY_ACTIVATIONS)
        self.query_activation = query_activation
        if k:
            check_top_k(k, kwargs.get("num_experts", 4), gate_gradient, allowed=("residual", "renormalize"))
        self.k = k
        super().__init__(**kwargs)
        self.attention = AttentionGate(
            hidden_dim_of(self.gate, self.input_shape), hidden_dim_of(self.experts[0], self.input_shape), attention_dim
        )

    def build_gate(self) -> nn.Module:
        """The gate network without its output layer (and, with ``query_activation="none"``, without
        its last ReLU): it yields the query's hidden state."""
        hp = self.hparams
        gate = build_network(hp.gate, self.input_shape, None, hp.gate_hidden, hp.gate_channels, "gate")
        if self.query_activation == "none":
            mlp = getattr(gate, "mlp", gate)
            if not isinstance(getattr(mlp, "body", None), nn.Sequential) or not isinstance(mlp.body[-1], nn.ReLU):
                raise ValueError("query_activation='none' needs a built-in 'mlp' or 'conv' gate, got a custom network")
            mlp.body[-1] = nn.Identity()  # the last hidden layer's ReLU
        return gate

    def mixes_densely(self) -> bool:
        """The output is the dense mixture when ``k == 0``."""
        return not self.k

    def gate_logits(self, x: Tensor, expert_hidden: Tensor) -> Tensor:
        return self.attention(self.gate(x)[0], expert_hidden)

    def expert_logit_layer(self) -> None:
        """None: the logits are attention scores, not rows of the gate's output layer."""
        return None

    def combine(self, log_gate: Tensor, expert_log_probs: Tensor) -> Tensor:
        if not self.k:
            return super().combine(log_gate, expert_log_probs)
        indices = log_gate.topk(self.k, dim=-1).indices
        selected = expert_log_probs.gather(1, indices.unsqueeze(-1).expand(-1, -1, expert_log_probs.shape[-1]))
        residual = self.training and self.hparams.gate_gradient == "residual"
        return top_k_mixture(log_gate, indices, selected, residual)
