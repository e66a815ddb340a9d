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

Where a package's ``__init__`` has none of its markers (another version), or ``GMNN_DEFER_IMPORTS=0``,
it is imported as usual. :func:`install` adds the finder (``import gmnn`` calls it); a package imported
before it is left as it is.
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


class DeferredInitFinder(importlib.abc.MetaPathFinder):
    """Finds the packages of :data:`DEFERRED` as the other finders do, with :class:`_DeferredInitLoader`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in DEFERRED or os.environ.get(ENV, "1") == "0":
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
        markers, names = DEFERRED[fullname]
        spec.loader = _DeferredInitLoader(spec.loader, markers, names)
        return spec


def install() -> None:
    """Put :class:`DeferredInitFinder` first in ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, DeferredInitFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, DeferredInitFinder())
