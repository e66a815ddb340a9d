"""Routers that carry the specialization methods of gated modular networks to token routing.

The paper's gates (Krishnamurthy & Watkins, 2021, "Interpretability in Gated Modular Neural
Networks"; Krishnamurthy, Watkins & Gaertner, 2023, "Improving Expert Specialization in Mixture of
Experts") weight whole expert networks per sample; these routers apply two of their methods to the
tokens of a :class:`~gmnn.nn.MoELayer`:

* :class:`TemperatureSoftmaxRouter`: softmax top-k with a router temperature, and the paper's
  dual temperature (the experts learn from a flat gate, the router from a sharp one);
* :class:`AttentionRouter`: the attention gate, a query from the token and a key per expert
  (learned, or from the expert's own hidden layer on that token).

The other two methods are options of the layer (the pair-sampled sample-similarity loss,
``MoELayer(similarity_same_weight=..., similarity_different_weight=...)``) and of the language model
(annealing the temperatures, hard-EM allocation before the router is trusted:
:class:`gmnn.models.MoETransformerLM`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gmnn.nn.functional.temperature import MIN_TEMPERATURE
from gmnn.nn.moe.experts import MLPExperts
from gmnn.nn.moe.routers import SoftmaxTopKRouter
from gmnn.validation import check_choice, check_positive, check_positive_int

__all__ = ["AttentionRouter", "TemperatureSoftmaxRouter"]


def _check_temperature(name: str, value: float) -> None:
    check_positive(name, value)
    if value < MIN_TEMPERATURE:
        raise ValueError(f"{name} must be >= {MIN_TEMPERATURE:g} (below it logits / T overflow), got {value:g}")


class TemperatureSoftmaxRouter(SoftmaxTopKRouter):
    """Softmax top-k at a router temperature, with the paper's dual temperature as an option
    (Krishnamurthy, Watkins & Gaertner, 2023, "Improving Expert Specialization in Mixture of Experts").

    Scores are ``softmax(logits / temperature)`` (noise, when ``noise_std > 0``, is added to the
    logits before dividing). The temperature does not change which k experts a token picks (the
    softmax keeps the order of the logits), only the combine weights and the probabilities of the
    balancing losses: a high temperature spreads a token's weight over its k experts, a low one
    puts it on the first.

    Dual temperature (``expert_temperature`` set): while training the combine weights have the
    value of ``softmax(logits / expert_temperature)`` (a flat gate, so every picked expert learns
    from its tokens) and the gradient of ``softmax(logits / temperature)`` (the router learns as a
    sharp gate), by the straight-through sum ``flat.detach() + sharp - sharp.detach()``. This is the
    single-optimizer, token-level form of the paper's dual-temperature training (gmnn's
    :class:`~gmnn.models.dual_temperature.DualTemperatureMoE` uses two optimizers and two mixture
    losses). Evaluation uses ``temperature`` alone.

    Both temperatures are buffers (saved in checkpoints); :meth:`set_temperature` changes them (a
    schedule, e.g. :class:`gmnn.models.MoETransformerLM`'s ``temperature_decay``).

    Args:
        d_model: Token width.
        num_experts: Number of experts E.
        k: Experts per token.
        noise_std: Std of Gaussian noise on the logits while training.
        temperature: Router temperature > 0 (1: :class:`~gmnn.nn.SoftmaxTopKRouter`).
        expert_temperature: Temperature of the experts' combine weights while training (``None``: off).
        **kwargs: As :class:`~gmnn.nn.moe.routers.TokenChoiceRouter` (``normalize``, ``bias``, ``balance_rate`` ...).
    """

    def __init__(self, d_model: int, num_experts: int, k: int = 2, noise_std: float = 0.0, temperature: float = 1.0,
                 expert_temperature: float | None = None, **kwargs: Any) -> None:
        super().__init__(d_model, num_experts, k, noise_std=noise_std, **kwargs)
        _check_temperature("temperature", temperature)
        if expert_temperature is not None:
            _check_temperature("expert_temperature", expert_temperature)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("expert_temperature",
                             None if expert_temperature is None else torch.tensor(float(expert_temperature)))

    @property
    def dual(self) -> bool:
        """Whether the experts' combine weights use their own temperature while training."""
        return self.expert_temperature is not None

    @torch.no_grad()
    def set_temperature(self, temperature: float | None = None, expert_temperature: float | None = None) -> None:
        """Set the router temperature and / or (dual routers only) the experts' temperature."""
        if temperature is not None:
            _check_temperature("temperature", temperature)
            self.temperature.fill_(float(temperature))
        if expert_temperature is not None:
            if not self.dual:
                raise ValueError("expert_temperature applies to a dual router (built with expert_temperature)")
            _check_temperature("expert_temperature", expert_temperature)
            self.expert_temperature.fill_(float(expert_temperature))

    def scores(self, x: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        probs = torch.softmax(logits / self.temperature, dim=-1)
        noisy = logits + self.noise(x, logits) if self.training and self.noisy() else logits
        sharp = probs if noisy is logits else torch.softmax(noisy / self.temperature, dim=-1)
        if not (self.training and self.dual):
            return sharp, probs
        flat = torch.softmax(noisy / self.expert_temperature, dim=-1)
        return flat.detach() + sharp - sharp.detach(), probs

    def extra_repr(self) -> str:
        dual = f", expert_temperature={float(self.expert_temperature):g}" if self.dual else ""
        return f"k={self.k}, temperature={float(self.temperature):g}{dual}"


Keys = ("learned", "expert_hidden")


class AttentionRouter(TemperatureSoftmaxRouter):
    """Attention router: a query from the token, a key per expert (the attention gate of Krishnamurthy,
    Watkins & Gaertner, 2023, "Improving Expert Specialization in Mixture of Experts", at token level).

    The logit of expert e for token t is ``q_t . k_e / sqrt(attention_dim)`` with ``q_t = W_q x_t``
    and, by ``keys``:

    * ``"learned"``: a learned key per expert, ``k_e`` (``[E, attention_dim]``): logits
      ``x W_q^T K^T / sqrt(d)``, a low-rank router; cost ``O(T d attention_dim)``.
    * ``"expert_hidden"`` (the paper's gate): the key comes from expert e's own hidden layer on the
      token, ``k_{t,e} = W_k h_e(x_t)`` with ``h_e(x) = act(W1_e x + b1_e)`` of the layer's
      :class:`~gmnn.nn.moe.experts.MLPExperts`. Every expert's first layer runs on every token (as
      the paper's gate runs every expert; ``O(T E d hidden)``, the cost of the dense first layer)
      and the router's gradient reaches the experts' first layers. The layer hands its experts to
      the router (:meth:`bind_experts`, called by :class:`~gmnn.nn.MoELayer`); the router does not
      own them (they are not in its state dict).

    Scores, selection and the temperatures as :class:`TemperatureSoftmaxRouter`; ``routing.logits``
    are the attention logits.

    Args:
        d_model: Token width.
        num_experts: Number of experts E.
        k: Experts per token.
        attention_dim: Width of the queries and keys.
        keys: ``"learned"`` or ``"expert_hidden"``.
        expert_hidden: Hidden width of the experts (``keys="expert_hidden"``; checked when bound).
        **kwargs: As :class:`TemperatureSoftmaxRouter` (``temperature``, ``expert_temperature``,
            ``noise_std``, ``normalize``, ``balance_rate`` ...; ``bias`` is not used).
    """

    def __init__(self, d_model: int, num_experts: int, k: int = 2, attention_dim: int = 32, keys: str = "learned",
                 expert_hidden: int | None = None, **kwargs: Any) -> None:
        if kwargs.pop("bias", False):
            raise ValueError("AttentionRouter has no bias")
        super().__init__(d_model, num_experts, k, **kwargs)
        check_positive_int("attention_dim", attention_dim)
        check_choice("keys", keys, Keys)
        del self.weight
        self.attention_dim, self.keys = attention_dim, keys
        self.query = nn.Linear(d_model, attention_dim, bias=False)
        if keys == "learned":
            self.key = nn.Parameter(torch.randn(num_experts, attention_dim) / math.sqrt(attention_dim))
            self.key_projection = None
        else:
            if expert_hidden is None:
                raise ValueError("keys='expert_hidden' needs expert_hidden, the experts' hidden width")
            check_positive_int("expert_hidden", expert_hidden)
            self.key = None
            self.key_projection = nn.Linear(expert_hidden, attention_dim, bias=False)
        self._experts: list[MLPExperts] = []  # a plain list: the layer owns the experts

    def bind_experts(self, experts: MLPExperts) -> None:
        """Use ``experts``' hidden layers as keys (``keys="expert_hidden"``; a no-op for learned keys)."""
        if self.keys != "expert_hidden":
            return
        if experts.num_experts != self.num_experts:
            raise ValueError(f"keys='expert_hidden' needs all {self.num_experts} experts in this process, "
                             f"got {experts.num_experts} (expert parallelism is not supported)")
        if experts.hidden != self.key_projection.in_features:
            raise ValueError(f"expert_hidden={self.key_projection.in_features} differs from the experts' hidden "
                             f"width {experts.hidden}")
        self._experts[:] = [experts]

    def logits(self, x: Tensor) -> Tensor:
        """Attention logits ``[T, E]``."""
        query = self.query(x.to(self.query.weight.dtype))  # [T, a]
        scale = 1 / math.sqrt(self.attention_dim)
        if self.key is not None:
            return query @ self.key.t() * scale
        if not self._experts:
            raise RuntimeError("keys='expert_hidden': the router has no experts; build it inside an MoELayer "
                               "or call bind_experts(experts)")
        experts = self._experts[0]
        hidden = experts.hidden_states(x.to(experts.w1.dtype))  # [E, T, h]
        # q . (W_k h) = (W_k^T q) . h: no [T, E, attention_dim] tensor
        return torch.einsum("th,eth->te", query @ self.key_projection.weight.to(query.dtype), hidden.to(query.dtype)) * scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, attention_dim={self.attention_dim}, keys={self.keys!r}"
