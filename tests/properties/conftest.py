"""Hypothesis settings of the property tests: derandomized (the same examples on every run, so CI never fails
on a draw no one can reproduce); ``HYPOTHESIS_PROFILE=explore`` draws fresh examples to look for new bugs."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
