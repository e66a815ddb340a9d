"""Feed-forward experts of a token MoE layer: stacked parameters, three ways to run them.

:class:`MLPExperts` holds E experts ``d_model -> hidden -> d_model`` as stacked
``[E, ...]`` parameters, either a plain MLP (GELU, as in GShard / Switch) or a
gated linear unit with three matrices (SwiGLU as in Mixtral, Qwen-MoE,
DeepSeekMoE, OLMoE; GeGLU; Shazeer, 2020, "GLU Variants Improve Transformer").
The first layer of a gated expert is stored as ``[E, 2 * hidden, d_model]``,
gate rows first then up rows (the layout of Hugging Face's fused
``gate_up_proj``). Fine-grained experts (DeepSeekMoE, Dai et al., 2024) are
just many small ones: a large ``num_experts`` with a small ``hidden``.

The layer runs them in one of three layouts: :meth:`MLPExperts.grouped` on
rows sorted by expert (``torch._grouped_mm``, no host sync),
:meth:`MLPExperts.batched` on a fixed ``[E, C, d_model]`` buffer (capacity,
expert choice, Soft MoE) and :meth:`MLPExperts.dense` with every expert on
every token. :class:`SharedExperts` are always on (DeepSeekMoE, Qwen2-MoE).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmnn.nn.functional.grouped import can_group, grouped_linear
from gmnn.nn.functional.batched_linear import linear_grouped, linear_shared
from gmnn.validation import check_choice, check_positive_int

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu,
               "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class MLPExperts(nn.Module):
    """E feed-forward experts with stacked parameters.

    Args:
        d_model: Token width.
        hidden: Hidden width of each expert.
        num_experts: Number of experts E.
        activation: ``"gelu"``, ``"gelu_tanh"`` (tanh approximation), ``"silu"`` or ``"relu"``.
        gated: Gated linear unit ``down(act(gate x) * up x)`` (3 matrices) instead of ``down(act(up x))``.
        bias: Whether the linear layers have biases.
    """

    def __init__(self, d_model: int, hidden: int, num_experts: int, activation: str = "gelu",
                 gated: bool = False, bias: bool = True) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("hidden", hidden)
        check_positive_int("num_experts", num_experts)
        check_choice("activation", activation, tuple(ACTIVATIONS))
        self.d_model, self.hidden, self.num_experts = d_model, hidden, num_experts
        self.activation, self.gated = activation, bool(gated)
        first = 2 * hidden if gated else hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, first, d_model))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.b1 = nn.Parameter(torch.empty(num_experts, first)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_experts, d_model)) if bias else None
        for weight, b, fan_in in [(self.w1, self.b1, d_model), (self.w2, self.b2, hidden)]:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(weight, -bound, bound)
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, hidden={self.hidden}, num_experts={self.num_experts}, "
                f"activation={self.activation!r}, gated={self.gated}, bias={self.b1 is not None}")

    def _act(self, h: Tensor) -> Tensor:
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return ACTIVATIONS[self.activation](gate) * up
        return ACTIVATIONS[self.activation](h)

    def _bias(self, b: Tensor | None, index: int) -> Tensor | None:
        return None if b is None else b[index]

    def expert(self, index: int, x: Tensor) -> Tensor:
        """Expert ``index`` on rows ``x [N, d_model]``."""
        h = self._act(F.linear(x, self.w1[index], self._bias(self.b1, index)))
        return F.linear(h, self.w2[index], self._bias(self.b2, index))

    def looped(self, x: Tensor, counts: list[int]) -> Tensor:
        """Rows sorted by expert ``[N, d_model]``, ``counts[e]`` rows for expert e: a loop over the non-empty
        groups. Each stacked parameter is split once (one backward node stacking E gradients), not indexed per
        expert (whose backward writes a full-size zero gradient per expert: E times the parameter's size)."""
        w1, w2 = self.w1.unbind(0), self.w2.unbind(0)
        b1 = [None] * self.num_experts if self.b1 is None else self.b1.unbind(0)
        b2 = [None] * self.num_experts if self.b2 is None else self.b2.unbind(0)
        return torch.cat([F.linear(self._act(F.linear(part, w1[e], b1[e])), w2[e], b2[e])
                          for e, part in enumerate(x.split(counts)) if counts[e] > 0])

    def can_group(self, x: Tensor) -> bool:
        """Whether :meth:`grouped` runs on rows like ``x`` (``torch._grouped_mm`` and its stride rule)."""
        return can_group(x, self.d_model, self.w1.shape[1], self.hidden)

    def grouped(self, x: Tensor, offsets: Tensor, group: Tensor) -> Tensor:
        """Rows sorted by expert ``[N, d_model]``; ``offsets [E]`` int32 group ends, ``group [N]`` each row's expert."""
        h = self._act(grouped_linear(x, self.w1, self.b1, offsets, group))
        return grouped_linear(h, self.w2, self.b2, offsets, group)

    def batched(self, x: Tensor) -> Tensor:
        """One buffer of rows per expert: ``[E, C, d_model] -> [E, C, d_model]`` (batched matmuls)."""
        return linear_grouped(self._act(linear_grouped(x, self.w1, self.b1)), self.w2, self.b2)

    def hidden_states(self, x: Tensor) -> Tensor:
        """Every expert's hidden activations (after the first layer and its activation) on every row:
        ``[T, d_model] -> [E, T, hidden]``."""
        return self._act(linear_shared(x, self.w1, self.b1))

    def dense(self, x: Tensor) -> Tensor:
        """Every expert on every row: ``[T, d_model] -> [E, T, d_model]``."""
        return linear_grouped(self._act(linear_shared(x, self.w1, self.b1)), self.w2, self.b2)


class SwiGLUExperts(MLPExperts):
    """Gated SiLU experts without biases (Mixtral, Qwen-MoE, DeepSeekMoE): ``down(silu(gate x) * up x)``."""

    def __init__(self, d_model: int, hidden: int, num_experts: int, bias: bool = False) -> None:
        super().__init__(d_model, hidden, num_experts, activation="silu", gated=True, bias=bias)


class GeGLUExperts(MLPExperts):
    """Gated GELU experts without biases: ``down(gelu(gate x) * up x)``."""

    def __init__(self, d_model: int, hidden: int, num_experts: int, bias: bool = False) -> None:
        super().__init__(d_model, hidden, num_experts, activation="gelu", gated=True, bias=bias)


class SharedExperts(nn.Module):
    """Experts every token goes through, added to the routed output (DeepSeekMoE; Qwen2-MoE).

    ``num_shared`` experts of width ``hidden`` are one expert of width
    ``num_shared * hidden`` (their sum). With ``gate=True`` the output is scaled
    per token by ``sigmoid(x . w_gate)``, as Qwen2-MoE's ``shared_expert_gate``.

    Args:
        d_model: Token width.
        hidden: Hidden width of one shared expert.
        num_shared: Number of shared experts.
        activation: As :class:`MLPExperts`.
        gated: As :class:`MLPExperts` (default SwiGLU).
        bias: As :class:`MLPExperts`.
        gate: Whether a sigmoid gate scales the shared output per token.
    """

    def __init__(self, d_model: int, hidden: int, num_shared: int = 1, activation: str = "silu",
                 gated: bool = True, bias: bool = False, gate: bool = False) -> None:
        super().__init__()
        check_positive_int("num_shared", num_shared)
        self.mlp = MLPExperts(d_model, num_shared * hidden, 1, activation=activation, gated=gated, bias=bias)
        self.gate = nn.Linear(d_model, 1, bias=False) if gate else None

    def forward(self, x: Tensor) -> Tensor:
        """``[T, d_model] -> [T, d_model]``."""
        out = self.mlp.expert(0, x)
        return out if self.gate is None else torch.sigmoid(self.gate(x)) * out
