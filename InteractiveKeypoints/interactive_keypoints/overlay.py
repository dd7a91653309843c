"""Landmarks drawn on a radiograph, saved as a PNG (matplotlib, no display needed).

Uses matplotlib's Figure + Agg canvas directly rather than pyplot: no global figure state
and no GUI backend is ever selected, so it is safe in servers, tests and Slicer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .conventions import FIXED_COLOR, PREDICTED, PREDICTED_COLOR, USER_FIXED, hex_color

PREDICTED_COLOUR, FIXED_COLOUR = hex_color(PREDICTED_COLOR), hex_color(FIXED_COLOR)
TRUTH_COLOUR = "#33ccff"
ARROW_COLOUR = "#ff4d4d"
MAX_SIDE_INCHES = 10.0
DPI = 100
TITLE_BAND = 0.06  # fraction of the figure height above the image for the title (two lines)


def save_overlay(
    path,
    image: np.ndarray,
    points,
    fixed=None,
    truth=None,
    moves=None,
    spacing=(1.0, 1.0),
    title: str = "",
) -> Path:
    """Write ``image`` (H, W) in grey with landmarks on top.

    points (K, 2) original pixels; fixed (K,) bool marks user-fixed points; truth (K, 2)
    drawn as small crosses; moves is a list of ((x0, y0), (x1, y1)) drawn as arrows.
    ``spacing`` (sx, sy) sets the pixel aspect so the anatomy is not stretched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    image = np.asarray(image, dtype=float)
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    fixed = np.zeros(len(points), dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
    h, w = image.shape
    aspect = float(spacing[1]) / float(spacing[0])

    figure = Figure(figsize=_figure_size(h * aspect, w, bool(title)), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0 - TITLE_BAND if title else 1.0))
    axes.imshow(image, cmap="gray", aspect=aspect, interpolation="bilinear")
    legend = []
    if truth is not None:
        truth = np.asarray(truth, dtype=float).reshape(-1, 2)
        axes.scatter(truth[:, 0], truth[:, 1], marker="x", s=14, linewidths=0.9, c=TRUTH_COLOUR)
        legend.append(Line2D([], [], ls="", marker="x", color=TRUTH_COLOUR, label="ground truth"))
    predicted = points[~fixed]
    axes.scatter(predicted[:, 0], predicted[:, 1], s=12, c=PREDICTED_COLOUR, edgecolors="black", linewidths=0.3)
    legend.append(Line2D([], [], ls="", marker="o", color=PREDICTED_COLOUR, label=PREDICTED))
    if fixed.any():
        axes.scatter(
            points[fixed, 0], points[fixed, 1], marker="D", s=30, c=FIXED_COLOUR, edgecolors="black", linewidths=0.5
        )
        legend.append(Line2D([], [], ls="", marker="D", color=FIXED_COLOUR, label=USER_FIXED))
    for start, end in moves or []:
        axes.annotate(
            "",
            xy=tuple(end),
            xytext=tuple(start),
            arrowprops=dict(arrowstyle="->", color=ARROW_COLOUR, lw=1.5, shrinkA=0, shrinkB=2),
        )
    if moves:
        legend.append(Line2D([], [], color=ARROW_COLOUR, label="user move"))
    axes.set_xlim(-0.5, w - 0.5)
    axes.set_ylim(h - 0.5, -0.5)
    axes.set_axis_off()
    axes.legend(handles=legend, loc="lower right", fontsize="small", framealpha=0.7)
    if title:
        figure.suptitle(title, fontsize="small", y=1.0 - TITLE_BAND / 2, va="center")
    path = Path(path)
    figure.savefig(path, dpi=DPI, facecolor="white")
    return path


def _figure_size(height: float, width: float, titled: bool) -> tuple[float, float]:
    """Inches for an image of height x width display units, the longer side MAX_SIDE_INCHES."""
    scale = MAX_SIDE_INCHES / max(height, width)
    return (max(width * scale, 4.0), height * scale / (1.0 - TITLE_BAND if titled else 1.0))
