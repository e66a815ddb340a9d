"""Sample-level mixture blocks (the paper's models): expert and gate networks, the batched experts, outputs.

A gate scores E experts for each input; the experts run as one batched computation
(:class:`Experts`); :mod:`gmnn.nn.functional` mixes their predictions.
"""

from gmnn.nn.mixture.experts import Experts
from gmnn.nn.mixture.gates import AttentionGate
from gmnn.nn.mixture.networks import MLP, ConvNet, build_network
from gmnn.nn.mixture.output import MoEOutput

__all__ = ["MLP", "AttentionGate", "ConvNet", "Experts", "MoEOutput", "build_network"]
