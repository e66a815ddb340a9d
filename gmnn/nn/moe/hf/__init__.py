"""Hugging Face MoE blocks to gmnn :class:`~gmnn.nn.MoELayer` and back, exactly or refused by name.

``from_hf(model.model.layers[i].mlp)`` builds a layer that computes what the
block computes (outputs and gradients), so that the routing of a real
checkpoint can be studied with gmnn's records and metrics; ``to_hf(layer,
block)`` writes the layer's (trained) weights back for ``save_pretrained``.
transformers itself is not imported: a block is recognised by its class name
(:data:`FAMILIES`, :data:`REFUSED`) and read by its attributes.
"""

from gmnn.nn.moe.hf.convert import from_hf, spec_of, to_hf
from gmnn.nn.moe.hf.families import FAMILIES, REFUSED

__all__ = ["FAMILIES", "REFUSED", "from_hf", "spec_of", "to_hf"]
