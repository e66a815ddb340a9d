"""Small feed-forward networks used as experts and gates.

Every network here returns ``(output, hidden)``: the output layer's
pre-activations and the last hidden layer, which the attention gate reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from gmnn.nn.mixture.custom import build_custom, check_network_spec
from gmnn.nn.functional.conv_pool import conv_maxpool2_channels_first, is_plain_conv_pool
from gmnn.validation import check_positive_int, check_shape


class MLP(nn.Module):
    """Multi-layer perceptron on flattened inputs.

    Args:
        in_features: Number of input features (inputs are flattened first).
        out_features: Number of outputs (classes for an expert, experts for a
            gate), or ``None`` for no output layer (the output is the hidden layer).
        hidden_dims: Widths of the hidden layers, at least one.

    Returns from ``forward``: ``(output [B, out_features], hidden [B, hidden_dims[-1]])``.
    """

    def __init__(self, in_features: int, out_features: int | None, hidden_dims: Sequence[int] = (32,)) -> None:
        super().__init__()
        check_positive_int("in_features", in_features)
        if out_features is not None:
            check_positive_int("out_features", out_features)
        if len(hidden_dims) < 1:
            raise ValueError(f"hidden_dims must list at least one width, got {list(hidden_dims)}")
        for width in hidden_dims:
            check_positive_int("hidden_dims", width)
        layers: list[nn.Module] = []
        width_in = in_features
        for width in hidden_dims:
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            width_in = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Identity() if out_features is None else nn.Linear(width_in, out_features)
        self.hidden_dim = width_in

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.body(x.flatten(1))
        return self.head(hidden), hidden


class ConvNet(nn.Module):
    """The paper's small convolutional network (Krishnamurthy et al., 2023).

    conv 3x3 (``channels`` filters) -> ReLU -> max-pool 2 -> fully connected
    layers of ``hidden_dims`` with ReLU -> linear head. With the defaults on
    MNIST (input 1x28x28) the expert is conv -> fc 169->5 -> fc 5->32 -> fc 32->10.

    Args:
        input_shape: ``(channels, height, width)`` of one input.
        out_features: Number of outputs, or ``None`` for no output layer.
        channels: Number of convolution filters.
        hidden_dims: Widths of the fully connected hidden layers, at least one.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int | None,
        channels: int = 1,
        hidden_dims: Sequence[int] = (5, 32),
    ) -> None:
        super().__init__()
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise ValueError(f"input_shape must be (channels, height, width) with positive sizes, got {list(input_shape)}")
        if min(input_shape[1:]) < 4:
            raise ValueError(f"input_shape height and width must be at least 4 for a 3x3 conv and 2x2 pool, got {list(input_shape)}")
        check_positive_int("channels", channels)
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], channels, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()
        )
        flat = channels * ((input_shape[1] - 2) // 2) * ((input_shape[2] - 2) // 2)
        self.mlp = MLP(flat, out_features, hidden_dims)
        self.hidden_dim = self.mlp.hidden_dim

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        conv, pool = self.features[0], self.features[2]
        if is_plain_conv_pool(conv, pool) and type(self.features[1]) is nn.ReLU:
            # same function as self.features, faster (gmnn.nn.functional.conv_pool); the ReLU commutes with the max
            features = torch.relu(conv_maxpool2_channels_first(x, conv.weight, conv.bias))  # [c, N, h, w]
            return self.mlp(features.transpose(0, 1).flatten(1))
        return self.mlp(self.features(x))


NETWORKS = ("mlp", "conv")
# a shorthand or a class-path mapping (gmnn.nn.mixture.custom); the Literal makes ``--help`` list the shorthands
NetworkSpec = Union[Literal["mlp", "conv"], dict[str, Any]]


def build_network(
    name: str | Mapping[str, Any],
    input_shape: Sequence[int],
    out_features: int | None,
    hidden_dims: Sequence[int],
    channels: int = 1,
    role: str = "network",
) -> nn.Module:
    """Build a network by name (``"mlp"`` or ``"conv"``) or from a class-path spec (:mod:`gmnn.nn.mixture.custom`).

    ``hidden_dims`` and ``channels`` configure the named networks only; a class-path
    network takes its arguments from its ``init_args``, and every output it returns is checked
    (:func:`~gmnn.nn.mixture.custom.check_network_output`), named by ``role`` (``"expert"``, ``"gate"``).

    Raises:
        ValueError: ``name`` is unknown or the input shape does not suit the network.
    """
    if isinstance(name, Mapping):
        check_network_spec(role, name, NETWORKS)
        return build_custom(name, input_shape, out_features, role)
    if name == "mlp":
        return MLP(math.prod(input_shape), out_features, hidden_dims)
    if name == "conv":
        return ConvNet(input_shape, out_features, channels, hidden_dims)
    raise ValueError(f"network must be one of {NETWORKS}, got {name!r}")


def hidden_dim_of(network: nn.Module, input_shape: Sequence[int]) -> int:
    """Width of a network's hidden output, read off the attribute or a dry run."""
    width = getattr(network, "hidden_dim", None)
    if isinstance(width, int):
        return width
    with torch.no_grad():
        _, hidden = network(torch.zeros(1, *input_shape))
    check_shape("hidden", hidden, (1, -1))
    return hidden.shape[1]
