"""LightningModules: one per mixture-of-experts variant, sharing :class:`MoEModule`."""

# ruff: noqa: E402
from gmnn import pl as _pl

_pl.root()  # the Lightning package, fixed now: a bad GMNN_LIGHTNING fails here, before torch or Lightning loads

from gmnn.models.attention import AttentionGateMoE
from gmnn.models.base import MoEModule
from gmnn.models.dense import DenseMoE
from gmnn.models.dual_temperature import DualTemperatureMoE
from gmnn.models.expert_loss_gate import ExpertLossGateMoE
from gmnn.models.gateless import GatelessMoE
from gmnn.models.hard_em import HardEMMoE
from gmnn.models.lm import MoETransformerLM
from gmnn.models.product import ProductOfExperts
from gmnn.models.regression import RegressionMoE
from gmnn.models.single import SingleModel
from gmnn.models.stochastic import StochasticMoE
from gmnn.models.topk import TopKMoE

__all__ = [
    "AttentionGateMoE",
    "DenseMoE",
    "DualTemperatureMoE",
    "ExpertLossGateMoE",
    "GatelessMoE",
    "HardEMMoE",
    "MoEModule",
    "MoETransformerLM",
    "ProductOfExperts",
    "RegressionMoE",
    "SingleModel",
    "StochasticMoE",
    "TopKMoE",
]
