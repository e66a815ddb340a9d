"""LightningModules: one per mixture-of-experts variant, sharing :class:`MoEModule`."""

from gmnn.models.attention import AttentionGateMoE
from gmnn.models.base import MoEModule
from gmnn.models.dense import DenseMoE
from gmnn.models.product import ProductOfExperts
from gmnn.models.topk import TopKMoE

__all__ = ["AttentionGateMoE", "DenseMoE", "MoEModule", "ProductOfExperts", "TopKMoE"]
