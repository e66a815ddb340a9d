"""Hypothesis strategies shared by the property tests: small shapes, extreme logits, gates with exact zeros."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

#: Finite logits from ordinary to extreme (softmax underflows to exactly 0 for gaps above ~750 in float64).
LOGITS = st.one_of(
    st.floats(-3.0, 3.0, allow_nan=False, width=32),  # gates and experts that are far from one-hot
    st.floats(-30.0, 30.0, allow_nan=False, width=32),
    st.sampled_from([-1e30, -1e6, -1e4, -100.0, 0.0, 100.0, 1e4, 1e6, 1e30]),
)
DTYPES = st.sampled_from([torch.float32, torch.float64])


@st.composite
def logits(draw: st.DrawFn, shape: tuple[int, ...], dtype: torch.dtype = torch.float64,
           minus_inf: bool = False) -> torch.Tensor:
    """Finite (possibly extreme) logits of ``shape``; with ``minus_inf`` some entries are ``-inf`` (probability 0),
    never a whole last-dimension row."""
    values = draw(arrays(np.float64, shape, elements=LOGITS))
    if minus_inf:
        zero = draw(arrays(np.bool_, shape, elements=st.sampled_from([False, False, False, True])))
        zero[..., 0] &= ~zero.all(-1)  # keep one entry of every row
        values = np.where(zero, -np.inf, values)
    return torch.tensor(values, dtype=dtype)


def tolerance(dtype: torch.dtype) -> float:
    """Absolute tolerance for probabilities computed in ``dtype``."""
    return 1e-5 if dtype == torch.float32 else 1e-10
