"""Pure tensor functions of gmnn's blocks: mixtures, routing, losses, regularizers and kernels.

Nothing here holds parameters or state; modules in :mod:`gmnn.nn.mixture` and :mod:`gmnn.nn.moe`
and the LightningModules in :mod:`gmnn.models` call these.
"""

from gmnn.nn.functional.combine import class_log_probs, dense_mixture, product_of_experts, softmax_of_mixture, sparse_mixture, top_k_mixture
from gmnn.nn.functional.losses import entropy, hard_em_loss, per_expert_nll, softmin_allocation, stochastic_mixture_loss
from gmnn.nn.functional.regularizers import (
    allocation_loss,
    ideal_gate_loss,
    importance_loss,
    load_balancing_loss,
    orthogonality_loss,
    pair_similarity_terms,
    prediction_class_cv,
    router_z_loss,
    sample_distances,
    sample_similarity_terms,
    sample_token_pairs,
)
from gmnn.nn.functional.routing import softmax_routing, top_k_routing

__all__ = [
    "allocation_loss",
    "class_log_probs",
    "dense_mixture",
    "entropy",
    "hard_em_loss",
    "ideal_gate_loss",
    "importance_loss",
    "load_balancing_loss",
    "orthogonality_loss",
    "pair_similarity_terms",
    "per_expert_nll",
    "prediction_class_cv",
    "product_of_experts",
    "router_z_loss",
    "sample_distances",
    "sample_similarity_terms",
    "sample_token_pairs",
    "softmax_of_mixture",
    "softmax_routing",
    "softmin_allocation",
    "sparse_mixture",
    "stochastic_mixture_loss",
    "top_k_mixture",
    "top_k_routing",
]
