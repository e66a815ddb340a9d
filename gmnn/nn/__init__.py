"""Plain ``torch.nn`` building blocks for mixtures of experts (no Lightning).

Three packages, one job each:

- :mod:`gmnn.nn.functional`: pure tensor functions (mixtures, routing, losses, regularizers, kernels);
- :mod:`gmnn.nn.mixture`: the sample-level mixture blocks of the paper (networks, batched experts, gates);
- :mod:`gmnn.nn.moe`: the token-level MoE layer (layer, routers, experts, routing record, Hugging Face
  conversion, expert parallelism).

The public names of all three are importable from here.
"""

from gmnn.nn.functional import dense_mixture, product_of_experts, softmax_routing, sparse_mixture, top_k_mixture, top_k_routing
from gmnn.nn.mixture import MLP, AttentionGate, ConvNet, Experts, MoEOutput, build_network
from gmnn.nn.moe import (
    AttentionRouter,
    ExpertChoiceRouter,
    ExpertParallelMoELayer,
    GeGLUExperts,
    MLPExperts,
    MoELayer,
    NoisyTopKRouter,
    Router,
    Routing,
    SharedExperts,
    SigmoidRouter,
    SoftMoERouter,
    SoftmaxTopKRouter,
    SwiGLUExperts,
    TemperatureSoftmaxRouter,
    from_hf,
    to_hf,
)

__all__ = [
    "MLP",
    "AttentionGate",
    "AttentionRouter",
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
    "TemperatureSoftmaxRouter",
    "build_network",
    "dense_mixture",
    "from_hf",
    "product_of_experts",
    "softmax_routing",
    "sparse_mixture",
    "to_hf",
    "top_k_mixture",
    "top_k_routing",
]
