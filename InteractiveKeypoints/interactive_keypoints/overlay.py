"""Landmarks drawn on a radiograph, saved as a PNG (matplotlib, no display needed).

With a measurement set it draws what a clinician reads, as the Slicer view does: for a spine
("aasce-cobb") each vertebra's outline through its four corners and the Cobb angles' lines
with their values; for a cephalogram ("isbi-ceph") every point's name and the analysis'
lines, with the values and classes listed.

Uses matplotlib's Figure + Agg canvas directly rather than pyplot: no global figure state
and no GUI backend is ever selected, so it is safe in servers, tests and Slicer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .conventions import FIXED_COLOR, MEASUREMENT_COLOR, PREDICTED, PREDICTED_COLOR, USER_FIXED, hex_color

PREDICTED_COLOUR, FIXED_COLOUR = hex_color(PREDICTED_COLOR), hex_color(FIXED_COLOR)
MEASUREMENT_COLOUR = hex_color(MEASUREMENT_COLOR)
OUTLINE_COLOUR = "#f2f2f2"
COBB_LINE_EXTENSION = 1.5  # a Cobb line is drawn this many endplate widths to each side, as on a film
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
    measurement_set: str = "",
    names=None,
    spacing_known: bool = True,
) -> Path:
    """Write ``image`` (H, W) in grey with landmarks on top.

    points (K, 2) original pixels; fixed (K,) bool marks user-fixed points; truth (K, 2)
    drawn as small crosses; moves is a list of ((x0, y0), (x1, y1)) drawn as arrows.
    ``spacing`` (sx, sy) sets the pixel aspect so the anatomy is not stretched.
    ``measurement_set`` ("aasce-cobb", "isbi-ceph"; "" none) adds the clinical drawing (see the
    module), with ``names`` for the ceph labels; lengths are in mm where ``spacing_known``.
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
    if measurement_set:
        legend += draw_measurements(axes, points, measurement_set, names, spacing if spacing_known else None, h)
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


def draw_measurements(axes, points: np.ndarray, measurement_set: str, names, spacing, image_height: int) -> list:
    """The clinical drawing of ``measurement_set`` on ``axes``; returns its legend entries."""
    from matplotlib.lines import Line2D

    from .measurements import measure

    records = measure(points, measurement_set, spacing=spacing, image_height=image_height)
    line_style = dict(color=MEASUREMENT_COLOUR, lw=1.2, alpha=0.9)
    if measurement_set == "aasce-cobb":
        for corners in points.reshape(-1, 4, 2):  # top-left, top-right, bottom-left, bottom-right
            outline = corners[[0, 1, 3, 2, 0]]
            axes.plot(outline[:, 0], outline[:, 1], color=OUTLINE_COLOUR, lw=0.8, alpha=0.8)
        for record in records:
            for (x0, y0), (x1, y1) in record.lines:
                start, end = np.array([x0, y0]), np.array([x1, y1])
                reach = (end - start) * COBB_LINE_EXTENSION
                axes.plot(*np.stack([start - reach, end + reach]).T, **line_style)
            label_at = np.array(record.lines[1][1]) + [0.04 * image_height, 0.0]  # right of the lower line
            axes.annotate(
                f"{record.name} {record.value:.1f}\u00b0",
                xy=tuple(label_at),
                color=MEASUREMENT_COLOUR,
                fontsize="small",
                va="center",
                bbox=dict(boxstyle="round,pad=0.2", fc="black", ec="none", alpha=0.6),
            )
        return [
            Line2D([], [], color=OUTLINE_COLOUR, label="vertebra outline"),
            Line2D([], [], color=MEASUREMENT_COLOUR, label="Cobb lines"),
        ]
    for record in records:
        for (x0, y0), (x1, y1) in record.lines:
            axes.plot([x0, x1], [y0, y1], **(line_style | {"lw": 0.8, "alpha": 0.6}))
    from matplotlib import patheffects

    readable = [patheffects.withStroke(linewidth=1.5, foreground="black")]  # white on bone stays legible
    for name, (x, y) in zip(names or [], points):
        axes.annotate(
            name,
            xy=(x, y),
            xytext=(4, -4),
            textcoords="offset points",
            color="white",
            fontsize=6,
            path_effects=readable,
        )
    table = "\n".join(
        f"{r.name} {r.value:.1f} {'' if r.unit == 'ratio' else r.unit}" + (f"  {r.category}" if r.category else "")
        for r in records
    )
    axes.text(
        0.01, 0.01, table, transform=axes.transAxes, va="bottom", ha="left", fontsize=6, color="white",
        family="monospace", bbox=dict(boxstyle="round,pad=0.3", fc="black", ec="none", alpha=0.6),
    )  # fmt: skip
    return [Line2D([], [], color=MEASUREMENT_COLOUR, label="analysis lines")]
