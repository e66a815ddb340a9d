"""A hand-set model whose gate and experts are known exactly, for tests that compare with numbers worked out by hand."""

from __future__ import annotations

import math

import torch

import gmnn.models
from gmnn.models import MoEModule

def two_expert_model(variant: str = "DenseMoE") -> MoEModule:
    """2 experts, 2 classes. Input A = (1, 0) gets gate [3/4, 1/4], input B = (0, 1) gets [1/4, 3/4];
    expert 0 always predicts [0.8, 0.2], expert 1 [0.3, 0.7]. For any x the gate logits are
    (log 3 / 2) (r_0 - r_1) [1, -1] with r = relu(x) (a dense or an attention gate alike)."""
    kwargs = dict(input_shape=[2], num_classes=2, num_experts=2, expert_hidden=[2], gate_hidden=[2])
    model = getattr(gmnn.models, variant)(**kwargs, **({"attention_dim": 1} if variant == "AttentionGateMoE" else {}))
    with torch.no_grad():
        model.gate.body[0].weight.copy_(torch.eye(2)), model.gate.body[0].bias.zero_()  # gate hidden = x
        for e, (probs, hidden) in enumerate(zip([[0.8, 0.2], [0.3, 0.7]], torch.eye(2))):
            expert = model.experts[e]
            expert.body[0].weight.zero_(), expert.body[0].bias.copy_(hidden)  # expert e's hidden: one-hot e
            expert.head.weight.zero_(), expert.head.bias.copy_(torch.tensor(probs).log())
        half_log3 = math.log(3) / 2
        if variant == "AttentionGateMoE":  # logit_e = q k_e: q = +1 (A) / -1 (B), k = [+log 3 / 2, -log 3 / 2]
            model.attention.query.weight.copy_(torch.tensor([[1.0, -1.0]]))
            model.attention.key.weight.copy_(torch.tensor([[half_log3, -half_log3]]))
        else:
            model.gate.head.weight.copy_(torch.tensor([[half_log3, -half_log3], [-half_log3, half_log3]]))
            model.gate.head.bias.zero_()
    return model
