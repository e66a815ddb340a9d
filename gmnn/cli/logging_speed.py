"""A cheaper ``self.log``: Lightning's move of a logged value's accumulator to its device, skipped when it is there.

Every ``LightningModule.log`` call moves the ``_ResultMetric`` that accumulates the value to the
value's device (``_ResultMetric.to``). Lightning does that by walking the metric's whole ``__dict__``
with ``apply_to_collection`` (a call per attribute and per item of its containers, with abstract-class
checks, and a deep copy of its metadata dataclass) even when every tensor in it is already on that
device, on every training and evaluation step that logs (``benchmarks/README.md`` has the figures).

:func:`install` wraps that method. When the call asks for one device and every tensor the walk would
reach is already on it, the wrapper returns the metric at once, as Lightning's method would after
moving nothing. In every other case (another device, other arguments, a value of a kind the check
does not know) Lightning's own method runs. ``make_cli`` installs it; ``GMNN_LOG_FAST_PATH=0``
leaves Lightning's method alone. Where the chosen Lightning package lacks the class or the method,
nothing changes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import types
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import Tensor

ENV = "GMNN_LOG_FAST_PATH"
RESULT_MODULE = "trainer.connectors.logger_connector.result"

#: Types of values the walk leaves as they are (and that hold no tensor).
LEAVES = frozenset({bool, int, float, complex, str, bytes, type(None), torch.device, torch.dtype, inspect.Signature,
                    types.FunctionType, types.BuiltinFunctionType, types.MethodType})
CONTAINERS = frozenset({dict, OrderedDict, list, tuple, set, frozenset})
PLAIN_TENSORS = frozenset({Tensor, torch.nn.Parameter})


def all_on(value: Any, device: torch.device) -> bool | None:
    """Whether every tensor in ``value`` (a metric's attribute) is on ``device``; ``None`` for a value whose
    tensors this cannot see (a ``Metric``, a module, a tensor subclass, an object of an unknown type), where the
    full walk must run."""
    kind = type(value)
    if kind in LEAVES:
        return True
    if isinstance(value, Tensor):  # a subclass's ``to`` may do more than move it: the full walk runs
        return value.device == device if kind in PLAIN_TENSORS else None
    if kind in CONTAINERS:
        verdict: bool | None = True
        for item in (value.values() if isinstance(value, dict) else value):
            verdict = all_on(item, device)
            if verdict is not True:
                break
        return verdict
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all_on([getattr(value, field.name) for field in dataclasses.fields(value)], device)
    return None


def requested_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    """The device of a ``.to(device)`` call; ``None`` for any other arguments."""
    if kwargs or len(args) != 1 or not isinstance(args[0], (torch.device, str)):
        return None
    try:
        return torch.device(args[0])
    except (RuntimeError, TypeError):
        return None


def skip_when_there(to: Callable[..., Any]) -> Callable[..., Any]:
    """``to`` of a ``_ResultMetric``, returning the metric unchanged when everything is on the requested device."""

    @functools.wraps(to)
    def fast_to(self: Any, *args: Any, **kwargs: Any) -> Any:
        device = requested_device(args, kwargs)
        if device is not None and all_on(self.__dict__, device):
            return self
        return to(self, *args, **kwargs)

    fast_to.__wrapped_to__ = to  # type: ignore[attr-defined]
    return fast_to


def install(package: str | None = None) -> bool:
    """Wrap ``_ResultMetric.to`` of ``package`` (default: gmnn's Lightning, :mod:`gmnn.pl`); whether it is wrapped."""
    if os.environ.get(ENV, "1") == "0":
        return False
    if package is None:
        from gmnn import pl

        package = pl.root()
    try:
        result_metric = importlib.import_module(f"{package}.{RESULT_MODULE}")._ResultMetric
    except (ImportError, AttributeError):
        return False
    to = result_metric.__dict__.get("to")
    if to is None:
        return False
    if not hasattr(to, "__wrapped_to__"):
        result_metric.to = skip_when_there(to)
    return True
