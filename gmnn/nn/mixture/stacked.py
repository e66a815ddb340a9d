"""Evaluate E networks of one architecture from their stacked parameters.

``state`` maps each parameter/buffer name of one network to the E stacked
copies ``[E, ...]``. Two input layouts:

* shared: one input ``[N, ...]`` for every expert (the dense mixture). The
  first layer of all experts runs as one wide matmul (a convolution + max-pool
  as one matrix product of all experts' filters, :mod:`gmnn.nn.functional.conv_pool`).
* grouped: one input per expert ``[E, N, ...]`` (conditional computation).
  Linear layers run as ``baddbmm``, convolutions + max-pool as one batched matrix product.

:class:`~gmnn.nn.mixture.networks.MLP` and :class:`~gmnn.nn.mixture.networks.ConvNet` have
hand-written kernels; any other module is vectorised with ``torch.func.vmap``.
Every function returns ``(output [E, N, O], hidden [E, N, H])``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gmnn.nn.functional.batched_linear import linear_grouped, linear_shared
from gmnn.nn.functional.conv_pool import conv_maxpool2_channels_first, is_plain_conv_pool
from gmnn.nn.mixture.networks import MLP, ConvNet


def mlp_stacked(template: MLP, state: dict[str, Tensor], x: Tensor, shared: bool, prefix: str = "") -> tuple[Tensor, Tensor]:
    """E copies of ``template`` (an :class:`MLP`) from stacked parameters."""
    h = x.flatten(1) if shared else x.flatten(2)
    for i, layer in enumerate(template.body):
        if isinstance(layer, nn.Linear):
            weight, bias = state[f"{prefix}body.{i}.weight"], state.get(f"{prefix}body.{i}.bias")
            h = linear_shared(h, weight, bias) if shared else linear_grouped(h, weight, bias)
            shared = False
        else:
            h = layer(h)
    if isinstance(template.head, nn.Linear):
        return linear_grouped(h, state[f"{prefix}head.weight"], state.get(f"{prefix}head.bias")), h
    return h, h


def convnet_stacked(template: ConvNet, state: dict[str, Tensor], x: Tensor, shared: bool) -> tuple[Tensor, Tensor]:
    """E copies of ``template`` (a :class:`ConvNet`): one convolution + max-pool for all experts, then the MLPs.

    The convolution and the max-pool run as one matrix product and a maximum over phases
    (:func:`~gmnn.nn.functional.conv_pool.conv_maxpool2_channels_first`), before the ReLU (they commute).
    """
    weight, bias = state["features.0.weight"], state.get("features.0.bias")  # [E, c, C_in, k, k], [E, c]
    experts, channels = weight.shape[0], weight.shape[1]
    if shared:  # one product for every expert's filters: [E * c, N, h, w]
        flat_bias = None if bias is None else bias.reshape(-1)
        y = conv_maxpool2_channels_first(x, weight.flatten(0, 1), flat_bias).unflatten(0, (experts, channels))
    else:  # x [E, N, C_in, H, W]: one batched product
        y = conv_maxpool2_channels_first(x, weight, bias)  # [E, c, N, h, w]
    y = F.relu(y).transpose(1, 2).flatten(2)  # [E, N, c * h * w], PyTorch's flatten order
    return mlp_stacked(template.mlp, state, y, shared=False, prefix="mlp.")


def shares_first_conv(template: nn.Module, gate: nn.Module) -> bool:
    """Whether conv experts like ``template`` and ``gate`` can run their first convolution + max-pool as one
    product: both plain :class:`ConvNet` s whose convolutions read inputs alike (channels, kernel, bias)."""
    if not (_has_conv_kernel(template) and _has_conv_kernel(gate)):
        return False
    mine, gates = template.features[0], gate.features[0]
    return (mine.in_channels, mine.kernel_size, mine.bias is None) == (gates.in_channels, gates.kernel_size, gates.bias is None)


def convnets_and_gate_stacked(
    template: ConvNet, state: dict[str, Tensor], gate: ConvNet, x: Tensor
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """E conv experts (stacked ``state``) and a conv ``gate`` on one input ``x [N, ...]``.

    The first layers of all of them are one convolution + max-pool of all their filters: one matrix
    product, one maximum over phases and one weight-gradient product instead of two each. Requires
    :func:`shares_first_conv`. Returns ``((expert output [E, N, O], expert hidden [E, N, H]), gate(x))``.
    """
    weight, bias = state["features.0.weight"], state.get("features.0.bias")  # [E, c, C_in, k, k], [E, c]
    experts, channels = weight.shape[0], weight.shape[1]
    conv = gate.features[0]
    both_bias = None if bias is None else torch.cat([bias.flatten(), conv.bias])
    y = F.relu(conv_maxpool2_channels_first(x, torch.cat([weight.flatten(0, 1), conv.weight]), both_bias))
    expert_y = y[: experts * channels].unflatten(0, (experts, channels)).transpose(1, 2).flatten(2)  # [E, N, c*h*w]
    gate_y = y[experts * channels :].transpose(0, 1).flatten(1)  # [N, c_gate*h*w], as ConvNet.forward
    return mlp_stacked(template.mlp, state, expert_y, shared=False, prefix="mlp."), gate.mlp(gate_y)


def _has_conv_kernel(template: nn.Module) -> bool:
    if type(template) is not ConvNet:
        return False
    conv, activation, pool = template.features[0], template.features[1], template.features[2]
    return conv.groups == 1 and type(activation) is nn.ReLU and is_plain_conv_pool(conv, pool)


def stacked_forward(template: nn.Module, state: dict[str, Tensor], x: Tensor, shared: bool) -> tuple[Tensor, Tensor]:
    """E networks shaped like ``template`` with parameters ``state``: ``(output, hidden)``, each ``[E, N, ...]``.

    Args:
        template: One network (its parameters are not used; may live on the meta device).
        state: Stacked parameters and buffers ``{name: [E, ...]}``.
        x: ``[N, ...]`` when ``shared``, else ``[E, N, ...]``.
        shared: Whether every expert reads the same input.
    """
    if type(template) is MLP:
        return mlp_stacked(template, state, x, shared)
    if _has_conv_kernel(template):
        return convnet_stacked(template, state, x, shared)  # type: ignore[arg-type]

    def run_one(one_state: dict[str, Tensor], one_x: Tensor) -> tuple[Tensor, Tensor]:
        return functional_call(template, one_state, (one_x,))

    return vmap(run_one, in_dims=(0, None if shared else 0), randomness="different")(state, x)
