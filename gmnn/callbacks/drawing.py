"""Matplotlib figures drawn to pixels: fresh ones, and kept ones that redraw only their changing values."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(size: tuple[float, float], dpi: float = 100, pyplot: bool = True) -> Figure:
    """A figure of ``size`` inches: pyplot's (shown by ``plt.show()``, kept until ``plt.close``), or with
    ``pyplot=False`` a plain ``Figure`` drawn by Agg, freed with its last reference and unseen by the backend."""
    if pyplot:
        return plt.figure(figsize=size, dpi=dpi)
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_pixels(fig: Figure) -> np.ndarray:
    """``fig`` as an ``[H, W, 3]`` uint8 array (what image-taking loggers accept), the figure closed."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


class KeptPlot:
    """A figure built once and redrawn with new values: only the artists that show them are drawn again.

    Building a figure and drawing it whole is slow (axes, ticks, text); a kept plot draws everything except
    :meth:`values_on_top` once, keeps those pixels, and on each :meth:`pixels` restores them and draws only
    the artists returned by :meth:`values_on_top`, in a full draw's order (matplotlib's blitting). Subclasses
    set ``fig`` and implement :meth:`values_on_top`.
    """

    fig: Figure
    _background: Any = None  # the figure without its values, drawn by the first pixels()

    def values_on_top(self) -> list[tuple[Axes, list[Artist]]]:
        """Per axes, the artists redrawn each time, in drawing order (the values, then what lies above them)."""
        raise NotImplementedError

    def pixels(self) -> np.ndarray:
        """The figure as ``[H, W, 3]`` uint8, what ``fig.canvas.draw()`` would show."""
        canvas = self.fig.canvas
        on_top = self.values_on_top()
        if self._background is None:
            for _, artists in on_top:
                for artist in artists:
                    artist.set_visible(False)
            canvas.draw()
            self._background = canvas.copy_from_bbox(self.fig.bbox)
            for _, artists in on_top:
                for artist in artists:
                    artist.set_visible(True)
        canvas.restore_region(self._background)
        for axes, artists in on_top:
            for artist in artists:
                axes.draw_artist(artist)
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
