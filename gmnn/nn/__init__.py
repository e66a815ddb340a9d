"""Plain ``torch.nn`` building blocks for mixtures of experts (no Lightning)."""

from gmnn.nn.combine import dense_mixture, product_of_experts, sparse_mixture, top_k_mixture
from gmnn.nn.expert_parallel import ExpertParallelMoELayer
from gmnn.nn.experts import Experts
from gmnn.nn.gates import AttentionGate
from gmnn.nn.hf import from_hf
from gmnn.nn.moe_experts import GeGLUExperts, MLPExperts, SharedExperts, SwiGLUExperts
from gmnn.nn.moe_layer import MoELayer
from gmnn.nn.networks import MLP, ConvNet, build_network
from gmnn.nn.output import MoEOutput
from gmnn.nn.routers import (
    ExpertChoiceRouter,
    NoisyTopKRouter,
    Router,
    SigmoidRouter,
    SoftmaxTopKRouter,
    SoftMoERouter,
)
from gmnn.nn.routing import softmax_routing, top_k_routing
from gmnn.nn.routing_record import Routing

__all__ = [
    "MLP",
    "AttentionGate",
    "ConvNet",
    "ExpertChoiceRouter",
    "ExpertParallelMoELayer",
    "Experts",
    "GeGLUExperts",
    "MLPExperts",
    "MoELayer",
    "MoEOutput",
    "NoisyTopKRouter",
    "Router",
    "Routing",
    "SharedExperts",
    "SigmoidRouter",
    "SoftMoERouter",
    "SoftmaxTopKRouter",
    "SwiGLUExperts",
    "build_network",
    "dense_mixture",
    "from_hf",
    "product_of_experts",
    "softmax_routing",
    "sparse_mixture",
    "top_k_mixture",
    "top_k_routing",
]
