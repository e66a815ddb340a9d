"""gmnn: gated modular neural networks, mixtures of experts in PyTorch Lightning."""

from gmnn.models import AttentionGateMoE, DenseMoE, MoEModule, ProductOfExperts, TopKMoE
from gmnn.nn.output import MoEOutput

__version__ = "0.1.0"

__all__ = ["AttentionGateMoE", "DenseMoE", "MoEModule", "MoEOutput", "ProductOfExperts", "TopKMoE", "__version__"]
