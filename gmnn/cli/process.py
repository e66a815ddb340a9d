"""Process settings of the ``gmnn`` command: freed memory kept for the next step, imports frozen for the collector.

**malloc.** PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a tensor of a
few megabytes (a batch of activations) is a fresh ``mmap`` that the kernel zero-fills page by page
when it is first written, and freed memory at the top of the heap goes back to the system: every
step pays those page faults again. Raising the mmap threshold to its maximum (32 MiB), the trim
threshold to 1 GiB and keeping 64 MiB of top padding lets each step reuse the pages of the last
one, which shortens a small model's training step (``python scripts/bench_end_to_end.py`` runs it
end to end; the figures are in ``benchmarks/README.md``).

The cost is memory: the process keeps its peak heap (plus 64 MiB) instead of returning freed
pages. The PyTorch performance guide's advice for CPU training (jemalloc or tcmalloc) has the
same effect; this does it without preloading a library. The ``gmnn`` command calls
:func:`tune_malloc` at start; ``GMNN_MALLOC_TUNING=0`` turns it off. It does nothing outside
glibc (macOS, Windows, musl).

**Garbage collector.** Importing Lightning, torchmetrics and torchvision creates about half a
million objects that live until the process ends. While they load, the collector would walk them
again and again (several full collections, a sizeable share of the import time):
the ``gmnn`` command and :mod:`gmnn.cli.app` load them in :func:`imports_without_collection`, which
pauses it and then hands the new objects to its oldest generation without a walk. Every full collection walks them again, and so does the interpreter's
exit (a noticeable part of a short ``gmnn fit`` process).
:func:`freeze_garbage_collector` (``gc.freeze``) moves the objects that exist when it is called
out of the collector's sight; the ``gmnn`` command calls it after its imports and again when the
command is done. Objects are still freed when their reference count drops; only cyclic garbage
among the frozen objects would be kept, which is why calls from Python (``make_cli`` in a
notebook) do not freeze.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
from collections.abc import Iterator

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**30), (M_TOP_PAD, 64 * 2**20))
ENV = "GMNN_MALLOC_TUNING"


def tune_malloc() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``; whether they were applied.

    Returns ``False`` (and changes nothing) when ``GMNN_MALLOC_TUNING=0`` or the C library is not glibc.
    """
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS)


@contextlib.contextmanager
def imports_without_collection() -> Iterator[None]:
    """Pause the cyclic garbage collector for a block of imports.

    Afterwards the objects created in the block join the collector's oldest generation without being
    walked (``gc.freeze`` then ``gc.unfreeze``: two list moves), unless objects were frozen before (the
    ``gmnn`` command's own freeze is left as it is). Garbage cycles made meanwhile are collected later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def freeze_garbage_collector() -> None:
    """Move every object that exists now to the collector's permanent generation (``gc.freeze``)."""
    gc.freeze()
