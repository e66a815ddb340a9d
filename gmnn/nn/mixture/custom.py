"""Experts and gates given by class path, as in a LightningCLI config.

A network spec is either a shorthand (``"mlp"``, ``"conv"``) or a mapping::

    expert:
      class_path: mypkg.MyExpert        # any torch.nn.Module subclass
      init_args: {width: 64}            # keyword arguments of its __init__
      hidden_from: body                 # optional: the submodule whose output is the hidden layer

gmnn passes ``input_shape`` (tuple), ``in_features`` (flattened size) and
``out_features`` (classes for an expert, experts for a gate) to every one of
these parameters that the class's ``__init__`` accepts and ``init_args`` does
not set. The module may return ``(logits, hidden)`` like gmnn's own networks,
or only the logits: then the hidden layer is the output of the submodule named
by ``hidden_from`` (flattened), or the logits themselves when it is not given.
Every call checks what it returned (:func:`check_network_output`: floating logits
``[batch, out_features]``, floating hidden ``[batch, H]``), in every model variant and
on every path (all experts at once, the rows routed to one expert, ``vmap``).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

SPEC_KEYS = ("class_path", "init_args", "hidden_from")
PASSED_SIZES = ("input_shape", "in_features", "out_features")


def import_class(name: str, class_path: Any) -> type[nn.Module]:
    """The ``nn.Module`` subclass ``class_path`` names (``"package.module.Class"``).

    Raises:
        ValueError: the path does not import or does not name an ``nn.Module`` subclass.
    """
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"{name}.class_path must be a dotted path 'package.module.Class', got {class_path!r}")
    module_name, _, attribute = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{name}.class_path {class_path!r} does not import: {error}") from None
    if not (inspect.isclass(found) and issubclass(found, nn.Module)):
        raise ValueError(f"{name}.class_path {class_path!r} must name a torch.nn.Module subclass, got {found!r}")
    return found


def check_network_spec(name: str, spec: Any, shorthands: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``spec`` is one of ``shorthands`` or a valid class-path mapping."""
    if isinstance(spec, str):
        if spec not in shorthands:
            raise ValueError(f"{name} must be one of {tuple(shorthands)} or {{class_path: ..., init_args: ...}}, got {spec!r}")
        return
    if not isinstance(spec, Mapping):
        raise ValueError(f"{name} must be one of {tuple(shorthands)} or a mapping with class_path, got {spec!r}")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; allowed: {list(SPEC_KEYS)}")
    import_class(name, spec.get("class_path"))
    if not isinstance(spec.get("init_args", {}), Mapping):
        raise ValueError(f"{name}.init_args must be a mapping of keyword arguments, got {spec['init_args']!r}")
    hidden_from = spec.get("hidden_from")
    if hidden_from is not None and not isinstance(hidden_from, str):
        raise ValueError(f"{name}.hidden_from must be a submodule name, got {hidden_from!r}")


def build_custom(
    spec: Mapping[str, Any], input_shape: Sequence[int], out_features: int | None, role: str = "network"
) -> nn.Module:
    """Build the network of a class-path spec, adapted to return ``(logits, hidden)``; ``role`` (``"expert"``,
    ``"gate"``) names it in errors."""
    cls = import_class("network", spec["class_path"])
    kwargs = dict(spec.get("init_args") or {})
    sizes = {"input_shape": tuple(input_shape), "in_features": math.prod(input_shape), "out_features": out_features}
    accepted = inspect.signature(cls.__init__).parameters
    for key in PASSED_SIZES:
        if key in accepted and key not in kwargs:
            kwargs[key] = sizes[key]
    return LogitsAndHidden(cls(**kwargs), spec["class_path"], out_features, spec.get("hidden_from"), role)


def check_network_output(network: str, logits: Any, hidden: Any, batch: int, out_features: int | None) -> None:
    """Raise ``ValueError`` unless a network returned floating logits ``[batch, out_features]`` and hidden ``[batch, H]``.

    Reads shapes and dtypes only (no host sync); under ``torch.func.vmap`` it sees one expert's tensors.

    Args:
        network: The network as named in the message, e.g. ``"expert mypkg.Net"``.
        logits: Its logits (class scores of an expert, expert scores of a gate).
        hidden: Its hidden layer.
        batch: The number of inputs it was given.
        out_features: The width its logits must have, or ``None`` to accept any.
    """
    _check_returned(network, "logits", logits, batch, out_features)
    _check_returned(network, "hidden", hidden, batch, None)


def _check_returned(network: str, name: str, tensor: Any, batch: int, width: int | None) -> None:
    """Raise ``ValueError`` unless ``tensor`` is a floating ``[batch, width]`` tensor (any width when ``None``)."""
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{network} returned {name} of type {type(tensor).__name__}; expected a tensor")
    if not tensor.is_floating_point():
        raise ValueError(f"{network} returned {name} of dtype {tensor.dtype}; expected a floating-point dtype (e.g. float32)")
    if tensor.dim() != 2 or tensor.shape[0] != batch or (width is not None and tensor.shape[1] != width):
        expected = f"[{batch}, {width if width is not None else 'H' if name == 'hidden' else '*'}]"
        raise ValueError(f"{network} returned {name} of shape {list(tensor.shape)} for {batch} inputs; expected {expected}")


class LogitsAndHidden(nn.Module):
    """Adapts a network to gmnn's ``(logits, hidden)`` contract and checks its output width.

    Args:
        network: The wrapped network (its parameters live under ``network.``).
        class_path: Its class path, named in errors.
        out_features: The width its logits must have, or ``None`` to accept any.
        hidden_from: Submodule whose output is the hidden layer when the network returns only logits.
        role: What the network is in the model (``"expert"``, ``"gate"``), named in errors.
    """

    def __init__(
        self, network: nn.Module, class_path: str, out_features: int | None, hidden_from: str | None = None,
        role: str = "network",
    ) -> None:
        super().__init__()
        self.network, self.class_path, self.out_features, self.hidden_from = network, class_path, out_features, hidden_from
        self.role = role
        if hidden_from is not None:
            try:
                network.get_submodule(hidden_from)
            except AttributeError:
                names = [n for n, _ in network.named_modules() if n]
                raise ValueError(f"hidden_from {hidden_from!r} is not a submodule of {class_path}; it has {names}") from None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        captured: list[Tensor] = []
        handle = None
        if self.hidden_from is not None:
            handle = self.network.get_submodule(self.hidden_from).register_forward_hook(
                lambda module, inputs, output: captured.append(output)
            )
        try:
            output = self.network(x)
        finally:
            if handle is not None:
                handle.remove()
        logits, hidden = self.logits_and_hidden(output, captured)
        check_network_output(f"{self.role} {self.class_path}", logits, hidden, x.shape[0], self.out_features)
        return logits, hidden

    def logits_and_hidden(self, output: Any, captured: list[Tensor]) -> tuple[Any, Any]:
        """``(logits, hidden)`` of what the network returned (``captured``: the ``hidden_from`` submodule's output)."""
        network = f"{self.role} {self.class_path}"
        if isinstance(output, tuple):
            if len(output) != 2:
                raise ValueError(f"{network} returned a {len(output)}-tuple; expected a tensor of logits or a (logits, hidden) pair")
            return output
        if not isinstance(output, Tensor):
            raise ValueError(f"{network} returned a {type(output).__name__}; expected a tensor of logits or a (logits, hidden) pair")
        return output, captured[-1].flatten(1) if captured else output
