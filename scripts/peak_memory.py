"""Resident-set measurements shared by the benchmark scripts (no import beyond the standard library)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def rss_mib() -> float:
    """This process's resident set now, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_during(run: Callable[[], object], interval: float = 2e-4) -> float:
    """The peak resident set (MiB) while ``run()`` runs, sampled every ``interval`` seconds by a thread (torch's
    kernels release the GIL)."""
    peak, done = [rss_mib()], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(interval)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    return peak[0]
