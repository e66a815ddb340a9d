"""Gates: networks that score experts for each input."""

from __future__ import annotations

import math

from torch import Tensor, nn

from gmnn.validation import check_positive_int, check_shape


class AttentionGate(nn.Module):
    """Attention over experts (Krishnamurthy, Watkins & Gaertner, 2023).

    The query comes from the gate network's hidden layer, the keys from each
    expert's hidden layer; the gate logit of expert i is ``q . k_i / sqrt(d)``.
    Routing (softmax with temperature, top-k) is applied to these logits.

    Args:
        query_dim: Width of the gate's hidden layer.
        key_dim: Width of the experts' hidden layer.
        attention_dim: Width d of queries and keys.
    """

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int = 32) -> None:
        super().__init__()
        check_positive_int("query_dim", query_dim)
        check_positive_int("key_dim", key_dim)
        check_positive_int("attention_dim", attention_dim)
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.key = nn.Linear(key_dim, attention_dim, bias=False)
        self.scale = 1.0 / math.sqrt(attention_dim)

    def forward(self, gate_hidden: Tensor, expert_hidden: Tensor) -> Tensor:
        """Score experts.

        Args:
            gate_hidden: ``[B, query_dim]``.
            expert_hidden: ``[B, E, key_dim]``.

        Returns:
            Gate logits ``[B, E]``.
        """
        check_shape("gate_hidden", gate_hidden, (-1, self.query.in_features))
        check_shape("expert_hidden", expert_hidden, (gate_hidden.shape[0], -1, self.key.in_features))
        q = self.query(gate_hidden)  # [B, d]
        k = self.key(expert_hidden)  # [B, E, d]
        return (k @ q.unsqueeze(-1)).squeeze(-1) * self.scale
