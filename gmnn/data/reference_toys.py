"""The 2-D toy problems of the reference implementation (``helper/data_generator.py`` of
``yamsgithub/modular_deep_learning``), generated with torch from a seed.

All draw points uniformly on ``[-1, 1]^2`` as the reference does; labels are the
reference's formulas. Its 4x4 board (``checker_board-2``, ``sum ceil(2x) mod 2``)
gives the same labels as gmnn's ``checkerboard_4x4``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# (x_min, x_max, y_min, y_max, degrees) of each quadrant, in the reference's order (data_generator.py 52-59)
QUADRANTS = ((-1.0, 0.0, -1.0, 0.0, 30.0), (-1.0, 0.0, 0.0, 1.0, 45.0), (0.0, 1.0, -1.0, 0.0, 60.0), (0.0, 1.0, 0.0, 1.0, 120.0))


def _uniform(n: int, generator: torch.Generator) -> Tensor:
    return torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1


def _noisy(points: Tensor, noise: float, generator: torch.Generator) -> Tensor:
    return (points + noise * torch.randn(points.shape, generator=generator, dtype=points.dtype)).float()


def board_4x4_labels(points: Tensor) -> Tensor:
    """The reference's 4x4 board: ``(ceil(2 x) + ceil(2 y)) mod 2``."""
    return torch.ceil(2 * points).long().sum(1) % 2


def rotate_quadrants(points: Tensor) -> tuple[Tensor, Tensor]:
    """The reference's ``checker_board_rotated`` (data_generator.py 51-100) applied to ``points`` ``[N, 2]``.

    Each point is labelled by the 4x4 board; then the points of each quadrant
    are rotated about the quadrant's lower-left corner (by 30, 45, 60 and 120
    degrees) and rescaled per axis, by the min and max of the quadrant's
    rotated points, back onto the quadrant. The labels move with their points,
    so each quadrant holds a rotated (and stretched) 2x2 board. Points come out
    grouped by quadrant, in the order above.
    """
    labels = board_4x4_labels(points)
    out_points, out_labels = [], []
    for x_min, x_max, y_min, y_max, degrees in QUADRANTS:
        inside = (points[:, 0] >= x_min) & (points[:, 0] <= x_max) & (points[:, 1] >= y_min) & (points[:, 1] <= y_max)
        if not inside.any():
            continue
        corner = points.new_tensor([x_min, y_min])
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        rotated = (points[inside] - corner) @ points.new_tensor([[c, -s], [s, c]]).T + corner
        low, high = rotated.min(0).values, rotated.max(0).values
        box = points.new_tensor([x_max - x_min, y_max - y_min])
        out_points.append(box * (rotated - low) / (high - low).clamp_min(1e-12) + corner)
        out_labels.append(labels[inside])
    return torch.cat(out_points), torch.cat(out_labels)


def quadrants_rotated(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The 4x4 board whose quadrants are rotated by 30, 45, 60 and 120 degrees (:func:`rotate_quadrants`)."""
    points, labels = rotate_quadrants(_uniform(n, generator))
    return _noisy(points, noise, generator), labels


def disc_labels(points: Tensor) -> Tensor:
    """The reference's disc (``checker_board-0``): 1 inside ``x^2 + y^2 < 0.66``, else 0."""
    return (points.square().sum(1) < 0.66).long()


def board_3x2_labels(points: Tensor) -> Tensor:
    """The reference's 3x2 board (``checker_board-1``): ``(ceil(1.5 (x + 1)) + ceil(y + 1)) mod 2``."""
    return (torch.ceil(1.5 * (points[:, 0] + 1)).long() + torch.ceil(points[:, 1] + 1).long()) % 2


def _labelled(rule: Callable[[Tensor], Tensor]) -> Callable[[int, float, torch.Generator], tuple[Tensor, Tensor]]:
    """A problem generator: uniform points labelled by ``rule``."""

    def generate(n: int, noise: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        points = _uniform(n, generator)
        return _noisy(points, noise, generator), rule(points)

    generate.__doc__ = rule.__doc__
    return generate


disc = _labelled(disc_labels)
board_3x2 = _labelled(board_3x2_labels)
