"""Plain ``torch.nn`` building blocks for mixtures of experts (no Lightning)."""

from gmnn.nn.combine import dense_mixture, product_of_experts, sparse_mixture, top_k_mixture
from gmnn.nn.experts import Experts
from gmnn.nn.gates import AttentionGate
from gmnn.nn.moe_layer import MoELayer
from gmnn.nn.networks import MLP, ConvNet, build_network
from gmnn.nn.output import MoEOutput
from gmnn.nn.routing import softmax_routing, top_k_routing

__all__ = [
    "MLP",
    "AttentionGate",
    "ConvNet",
    "Experts",
    "MoELayer",
    "MoEOutput",
    "build_network",
    "dense_mixture",
    "product_of_experts",
    "softmax_routing",
    "sparse_mixture",
    "top_k_routing",
    "top_k_mixture",
]
