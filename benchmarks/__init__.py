"""Naive reference implementations for ``scripts/bench.py`` (not part of the package)."""
