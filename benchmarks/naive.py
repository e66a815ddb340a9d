"""Naive references: the same math as gmnn's models, looping over experts in Python.

Every expert runs on every sample, one after the other (also for top-k, which
gathers the routed experts afterwards), and the mixtures are accumulated
expert by expert. Convolutional experts and gates run their standard layers
(``nn.Conv2d`` -> ``nn.ReLU`` -> ``nn.MaxPool2d``), as reference
implementations write them, not gmnn's fused conv + max-pool kernel.
``scripts/bench.py`` times them against the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmnn.models import AttentionGateMoE, DenseMoE, MoEModule, ProductOfExperts, TopKMoE
from gmnn.nn.functional.combine import top_k_mixture
from gmnn.nn.mixture.networks import ConvNet
from gmnn.nn.mixture.output import MoEOutput


def plain(network: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``network(x)``, with a :class:`ConvNet` run layer by layer through its standard modules."""
    if isinstance(network, ConvNet):
        return network.mlp(network.features(x))
    return network(x)


def loop_experts(model: MoEModule, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Every expert on every sample: lists of E log-probabilities ``[B, C]`` and hidden layers."""
    outputs = [plain(expert, x) for expert in model.experts.experts]
    return [torch.log_softmax(o[0], -1) for o in outputs], [o[1] for o in outputs]


def loop_mixture(log_gate: Tensor, log_probs: list[Tensor]) -> Tensor:
    """``log sum_i g_i p_i`` accumulated one expert at a time."""
    mixture = log_gate[:, :1] + log_probs[0]
    for i in range(1, len(log_probs)):
        mixture = torch.logaddexp(mixture, log_gate[:, i : i + 1] + log_probs[i])
    return mixture


def _output(log_probs: Tensor, log_gate: Tensor, gate_logits: Tensor, expert_log_probs: list[Tensor]) -> MoEOutput:
    return MoEOutput(log_probs, log_gate.exp(), gate_logits, torch.stack(expert_log_probs, 1), None, log_probs.new_zeros(()))


class NaiveDenseMoE(DenseMoE):
    def forward(self, x: Tensor) -> MoEOutput:
        log_probs, _ = loop_experts(self, x)
        gate_logits = plain(self.gate, x)[0]
        log_gate = torch.log_softmax(gate_logits / self.temperature, -1)
        return _output(loop_mixture(log_gate, log_probs), log_gate, gate_logits, log_probs)


class NaiveProductOfExperts(ProductOfExperts):
    def forward(self, x: Tensor) -> MoEOutput:
        log_probs, _ = loop_experts(self, x)
        gate_logits = plain(self.gate, x)[0]
        log_gate = torch.log_softmax(gate_logits / self.temperature, -1)
        scores = sum(log_gate[:, i : i + 1].exp() * lp for i, lp in enumerate(log_probs))
        return _output(F.log_softmax(scores, -1), log_gate, gate_logits, log_probs)


class NaiveAttentionGateMoE(AttentionGateMoE):
    def forward(self, x: Tensor) -> MoEOutput:
        log_probs, hidden = loop_experts(self, x)
        query = self.attention.query(plain(self.gate, x)[0])
        gate_logits = torch.stack([(self.attention.key(h) * query).sum(-1) for h in hidden], 1) * self.attention.scale
        log_gate = torch.log_softmax(gate_logits / self.temperature, -1)
        return _output(loop_mixture(log_gate, log_probs), log_gate, gate_logits, log_probs)


class NaiveTopKMoE(TopKMoE):
    def forward(self, x: Tensor) -> MoEOutput:
        log_probs, _ = loop_experts(self, x)
        gate_logits = plain(self.gate, x)[0]
        log_gate = torch.log_softmax(gate_logits / self.temperature, -1)
        indices = gate_logits.topk(self.k, -1).indices
        every = torch.stack(log_probs, 1)
        selected = every.gather(1, indices.unsqueeze(-1).expand(-1, -1, every.shape[-1]))
        residual = self.training and self.hparams.gate_gradient == "residual"
        mixture = top_k_mixture(log_gate, indices, selected, residual)
        return MoEOutput(mixture, log_gate.exp(), gate_logits, None, indices, x.new_zeros(()), selected)


NAIVE = {
    DenseMoE: NaiveDenseMoE,
    ProductOfExperts: NaiveProductOfExperts,
    AttentionGateMoE: NaiveAttentionGateMoE,
    TopKMoE: NaiveTopKMoE,
}
