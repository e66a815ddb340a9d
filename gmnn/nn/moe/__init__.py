"""The token-level MoE layer for transformers: the layer, its routers and experts, routing records,
Hugging Face conversion and expert parallelism."""

from gmnn.nn.moe.experts import GeGLUExperts, MLPExperts, SharedExperts, SwiGLUExperts
from gmnn.nn.moe.hf import from_hf, to_hf
from gmnn.nn.moe.layer import MoELayer
from gmnn.nn.moe.parallel import ExpertParallelMoELayer
from gmnn.nn.moe.record import Routing
from gmnn.nn.moe.routers import ExpertChoiceRouter, NoisyTopKRouter, Router, SigmoidRouter, SoftmaxTopKRouter, SoftMoERouter
from gmnn.nn.moe.specialization import AttentionRouter, TemperatureSoftmaxRouter

__all__ = [
    "AttentionRouter",
    "ExpertChoiceRouter",
    "ExpertParallelMoELayer",
    "GeGLUExperts",
    "MLPExperts",
    "MoELayer",
    "NoisyTopKRouter",
    "Router",
    "Routing",
    "SharedExperts",
    "SigmoidRouter",
    "SoftMoERouter",
    "SoftmaxTopKRouter",
    "SwiGLUExperts",
    "TemperatureSoftmaxRouter",
    "from_hf",
    "to_hf",
]
