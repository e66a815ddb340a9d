"""gmnn: gated modular neural networks, mixtures of experts in PyTorch Lightning.

``import gmnn`` is light: the models below are imported when first used, and nothing global
changes except that module names gmnn has moved keep importing (:mod:`gmnn._moved`).
"""

from __future__ import annotations

import importlib
from typing import Any

from gmnn._moved import install as _install_moved

_install_moved()

__version__ = "0.1.0"

#: Names importable from ``gmnn`` -> the module that defines them.
_LAZY = {
    "AttentionGateMoE": "gmnn.models",
    "DenseMoE": "gmnn.models",
    "MoEModule": "gmnn.models",
    "ProductOfExperts": "gmnn.models",
    "TopKMoE": "gmnn.models",
    "MoEOutput": "gmnn.nn.mixture.output",
}

__all__ = ["AttentionGateMoE", "DenseMoE", "MoEModule", "MoEOutput", "ProductOfExperts", "TopKMoE", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gmnn' has no attribute {name!r}")
