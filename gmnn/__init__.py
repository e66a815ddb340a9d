"""gmnn: gated modular neural networks, mixtures of experts in PyTorch Lightning."""

from gmnn._moved import install as _install_moved
from gmnn.process import imports_without_collection

_install_moved()  # old module names (gmnn._moved) keep importing

with imports_without_collection():  # torch, Lightning, torchmetrics: ~0.5M objects (gmnn.process)
    from gmnn.models import AttentionGateMoE, DenseMoE, MoEModule, ProductOfExperts, TopKMoE
    from gmnn.nn.mixture.output import MoEOutput

__version__ = "0.1.0"

__all__ = ["AttentionGateMoE", "DenseMoE", "MoEModule", "MoEOutput", "ProductOfExperts", "TopKMoE", "__version__"]
