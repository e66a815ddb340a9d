"""1-D regression toys whose pieces a mixture of experts can split between experts."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gmnn.data.toy import Generator, ToyDataModule


def _inputs(n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, 1, generator=generator) * 2 - 1


def noisy_sine(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``y = sin(2 pi x) + noise * eps`` for ``x`` uniform on [-1, 1]: inputs ``[N, 1]``, targets ``[N, 1]``."""
    x = _inputs(n, generator)
    return x, torch.sin(2 * math.pi * x) + noise * torch.randn(n, 1, generator=generator)


def piecewise(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Three pieces on [-1, 1]: ``-1 - x`` below -1/3, ``3x^2`` up to 1/3, ``1 - 2x`` above (plus noise).

    The pieces are discontinuous at -1/3 and 1/3, so one smooth expert per piece fits best.
    """
    x = _inputs(n, generator)
    y = torch.where(x < -1 / 3, -1 - x, torch.where(x < 1 / 3, 3 * x**2, 1 - 2 * x))
    return x, y + noise * torch.randn(n, 1, generator=generator)


REGRESSION_PROBLEMS: dict[str, tuple[Generator, int]] = {"sine": (noisy_sine, 1), "piecewise": (piecewise, 1)}
"""The 1-D regression problems by name: a generator ``(n, noise, torch.Generator) -> (x, y)`` and the target width."""


class ToyRegressionDataModule(ToyDataModule):
    """1-D regression toys generated from a seed: ``sine`` (noisy sine) and ``piecewise``.

    Inputs are ``[N, 1]`` on [-1, 1], targets ``[N, 1]`` floats;
    ``num_classes`` is the number of targets (1), as
    :class:`~gmnn.models.RegressionMoE` reads it. Arguments are those of
    :class:`~gmnn.data.toy.ToyDataModule` (``noise`` is the target noise's
    standard deviation); the default problem is ``sine``.
    """

    problems = REGRESSION_PROBLEMS

    def __init__(self, problem: str = "sine", noise: float = 0.1, **kwargs: Any) -> None:
        super().__init__(problem=problem, noise=noise, **kwargs)
        self.input_shape = [1]
