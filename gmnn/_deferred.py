"""Third-party packages whose ``__init__`` imports far more than gmnn uses, initialised in two steps.

``import torchmetrics`` (which Lightning runs) imports every metric domain: its image metrics import
torchvision's models and ``torch._dynamo``, its text metrics transformers, its audio metrics
``scipy.signal``. gmnn needs ``Metric``, ``MetricCollection`` and a few classification and regression
metrics. For the packages in :data:`DEFERRED`, :class:`DeferredInitFinder` runs the package's own
``__init__`` in two parts: the lines before the first line that starts with one of its markers when the
package is imported (plus the names it lists, taken from their submodules), the rest the first time
anything else is asked of the package (``torchmetrics.Accuracy``, ``from torchmetrics.functional import
accuracy``, ``dir(torchmetrics)``). Submodules import as always (``torchmetrics.classification``), and
every name of the package is there when asked for, so code that uses the package sees no difference
except when the heavy part is imported.

Lightning imports ``torch._dynamo`` (with sympy, ``torch.fx``'s symbolic shapes, inductor's and
FSDP's modules) while it loads, for one class to test instances against and two decorators: about a
third of what ``gmnn fit --help`` imports. A run imports it anyway on the optimizer's first
``zero_grad`` (PyTorch decorates it with ``torch._disable_dynamo``), ``--help`` never. The modules of
:data:`EDITS` run with some lines of their source replaced: ``from torch._dynamo import
OptimizedModule`` binds :class:`OptimizedModule`, which stands for that class in ``isinstance`` checks
(an instance of it exists only once ``torch._dynamo`` is imported), and ``@torch.compiler.disable``
becomes ``@torch._disable_dynamo``, PyTorch's own form of it that imports ``torch._dynamo`` on the
first call.

Where a package's ``__init__`` has none of its markers or a module's source lacks one of its lines
(another version), or ``GMNN_DEFER_IMPORTS=0``, it is imported as usual. :func:`install` adds the finder
(the ``gmnn`` command calls it); a module imported before it is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
from types import CodeType, ModuleType
from typing import Any

ENV = "GMNN_DEFER_IMPORTS"

#: Package -> (markers: the ``__init__`` line that starts the deferred part starts with one of them,
#: names bound when the package is imported as ``(submodule, name)``: those Lightning imports from it).
DEFERRED: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "torchmetrics": (
        ('if package_available("scipy")', "from torchmetrics import functional"),
        (("torchmetrics.metric", "Metric"), ("torchmetrics.collections", "MetricCollection")),
    ),
    # every functional domain (image, text, audio): the classification and regression metrics import
    # their functional forms from subpackages of it
    "torchmetrics.functional": (("from torchmetrics.functional.audio",), ()),
}

#: Submodules to import before the names of ``DEFERRED`` (a package's own import order avoids a cycle).
FIRST = {"torchmetrics": ("torchmetrics.utilities",)}

_OPTIMIZED_MODULE = ("from torch._dynamo import OptimizedModule\n", "from gmnn._deferred import OptimizedModule\n")
_COMPILER_DISABLE = ("    @torch.compiler.disable\n", "    @torch._disable_dynamo\n")

#: Module -> the (line of its source, line run instead) pairs; every line must be there, else nothing changes.
EDITS: dict[str, tuple[tuple[str, str], ...]] = {
    f"{prefix}.{module}": edits
    for prefixes, module, edits in (
        (("lightning_fabric", "lightning.fabric"), "wrappers", (_OPTIMIZED_MODULE,)),
        (("pytorch_lightning", "lightning.pytorch"), "utilities.compile", (_OPTIMIZED_MODULE,)),
        (("pytorch_lightning", "lightning.pytorch"), "trainer.connectors.logger_connector.result", (_COMPILER_DISABLE,)),
    )
    for prefix in prefixes
}


class _StandIn(type):
    """Metaclass of :class:`OptimizedModule`: ``isinstance`` and ``issubclass`` ask the real class once it exists."""

    @staticmethod
    def real() -> type | None:
        """``torch._dynamo``'s ``OptimizedModule`` if that module has been imported, else ``None``."""
        return getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)

    def __instancecheck__(cls, instance: Any) -> bool:
        real = cls.real()
        return real is not None and isinstance(instance, real)

    def __subclasscheck__(cls, subclass: type) -> bool:
        real = cls.real()
        return real is not None and issubclass(subclass, real)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        from torch._dynamo import OptimizedModule as real

        return real(*args, **kwargs)


class OptimizedModule(metaclass=_StandIn):
    """Stands for ``torch._dynamo.OptimizedModule`` (what ``torch.compile`` returns for a module) without importing it.

    ``isinstance(x, OptimizedModule)`` is ``isinstance(x, torch._dynamo.OptimizedModule)``: ``False`` while
    ``torch._dynamo`` is not imported, since no instance can exist before; calling it builds the real class's.
    """


class _Rest:
    """A deferred package's ``__getattr__`` and ``__dir__``: runs the rest of its ``__init__`` once, then answers."""

    def __init__(self, module: ModuleType, code: CodeType) -> None:
        self.module, self.code = module, code
        self.lock = threading.RLock()
        self.running = self.done = False

    def finish(self) -> None:
        with self.lock:
            if self.done or self.running:
                return
            self.running = True
            namespace = self.module.__dict__
            try:
                exec(self.code, namespace)
            finally:
                self.running = False
                self.done = True
                for hook in ("__getattr__", "__dir__"):
                    if getattr(namespace.get(hook), "__self__", None) is self:
                        del namespace[hook]

    def getattr(self, name: str) -> Any:
        if not self.running:
            self.finish()
        try:
            return self.module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.module.__name__!r} has no attribute {name!r}") from None

    def dir(self) -> list[str]:
        self.finish()
        return sorted(self.module.__dict__)


class _DeferredInitLoader(importlib.abc.Loader):
    """Runs the head of the package's ``__init__`` now and leaves the rest to :class:`_Rest`."""

    def __init__(self, loader: Any, markers: tuple[str, ...], names: tuple[tuple[str, str], ...]) -> None:
        self.loader, self.markers, self.names = loader, markers, names

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # the package's own loader from here on (resources, source, reloading)
        module.__loader__ = module.__spec__.loader = self.loader
        source = self.loader.get_source(module.__name__)
        lines = (source or "").splitlines(keepends=True)
        cut = next((i for i, line in enumerate(lines) if line.startswith(self.markers)), None)
        if cut is None:
            self.loader.exec_module(module)
            return
        filename = module.__spec__.origin or module.__name__
        exec(compile("".join(lines[:cut]), filename, "exec"), module.__dict__)
        rest = _Rest(module, compile("\n" * cut + "".join(lines[cut:]), filename, "exec"))
        module.__getattr__, module.__dir__ = rest.getattr, rest.dir  # type: ignore[method-assign]
        for name in FIRST.get(module.__name__, ()):
            importlib.import_module(name)
        for submodule, name in self.names:
            setattr(module, name, getattr(importlib.import_module(submodule), name))


def _has_disable_dynamo() -> bool:
    import torch

    return callable(getattr(torch, "_disable_dynamo", None))


class _EditedSourceLoader(importlib.abc.Loader):
    """Runs the module's source with the lines of :data:`EDITS` replaced (as usual when one is missing)."""

    def __init__(self, loader: Any, edits: tuple[tuple[str, str], ...]) -> None:
        self.loader, self.edits = loader, edits

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        source = self.loader.get_source(module.__name__) or ""
        lines = source.splitlines(keepends=True)
        found = [[i for i, line in enumerate(lines) if line == old] for old, _ in self.edits]
        if not all(found) or any("torch._disable_dynamo" in new for _, new in self.edits) and not _has_disable_dynamo():
            self.loader.exec_module(module)
            return
        for where, (_, new) in zip(found, self.edits):
            for i in where:
                lines[i] = new
        exec(compile("".join(lines), module.__spec__.origin or module.__name__, "exec"), module.__dict__)


class DeferredInitFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`DEFERRED` and :data:`EDITS` as the other finders do, with this module's loaders."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if (fullname not in DEFERRED and fullname not in EDITS) or os.environ.get(ENV, "1") == "0":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        if fullname in EDITS:
            spec.loader = _EditedSourceLoader(spec.loader, EDITS[fullname])
            return spec
        markers, names = DEFERRED[fullname]
        spec.loader = _DeferredInitLoader(spec.loader, markers, names)
        return spec


def install() -> None:
    """Put :class:`DeferredInitFinder` first in ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, DeferredInitFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, DeferredInitFinder())
