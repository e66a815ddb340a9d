"""The files of a git ref of this repository, unpacked in a folder: what the benchmarks measure a change against.

Shared by ``scripts/bench_startup.py`` and ``scripts/bench_overhead.py`` (``--ref``, ``--baseline-ref``).
"""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def export(ref: str, into: Path, repo: Path = REPO) -> Path:
    """The files of ``ref`` (``git archive``) unpacked in ``into``, a new folder; the repository is not touched."""
    into.mkdir(parents=True)
    archive = into.with_suffix(".tar")
    try:
        with open(archive, "wb") as out:
            subprocess.run(["git", "-C", str(repo), "archive", ref], stdout=out, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    finally:
        archive.unlink(missing_ok=True)
    return into
