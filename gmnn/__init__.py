"""gmnn: gated modular neural networks, mixtures of experts in PyTorch Lightning."""

from gmnn.process import imports_without_collection

with imports_without_collection():  # torch, Lightning, torchmetrics: ~0.5M objects (gmnn.process)
    from gmnn.models import AttentionGateMoE, DenseMoE, MoEModule, ProductOfExperts, TopKMoE
    from gmnn.nn.output import MoEOutput

__version__ = "0.1.0"

__all__ = ["AttentionGateMoE", "DenseMoE", "MoEModule", "MoEOutput", "ProductOfExperts", "TopKMoE", "__version__"]
