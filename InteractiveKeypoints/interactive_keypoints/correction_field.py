"""Moving the unconfirmed points with the user's corrections: a smooth correction field.

After a refine the network has seen the clicks, yet it may still disagree with them: at each
user-fixed landmark its own estimate (decoded from that landmark's channel) lies some residual
away from where the user put it. The residuals are samples of a displacement field over the
image; Gaussian-process regression (squared-exponential kernel) interpolates that field at the
other landmarks, which then move by it. Near a click the neighbours follow the correction; far
from every click the field fades to zero and the network's points stand.

Why on top of the network: a network trained on 2 CPU cores barely propagates a click (the
paper's gain comes from hundreds of GPU epochs), and a click is most informative exactly where
the network is unsure. The length scale is a fraction of the landmarks' extent (the larger side
of their bounding box), so one number fits images of any size; ``noise`` (relative to the
kernel's unit variance) keeps several nearby clicks from extrapolating wildly.
``length 0`` turns it off, which is the paper's rule (the network alone moves the points).
Each model folder says its value in model.json (``correction_length``), chosen on training images.
"""

from __future__ import annotations

import numpy as np


def landmark_extent(points: np.ndarray) -> float:
    """The larger side of the points' bounding box (px): the scale of the field's length."""
    return float(np.ptp(np.asarray(points, float), axis=0).max())


def correction_field(
    points: np.ndarray, fixed: np.ndarray, residuals: np.ndarray, length_px: float, noise: float
) -> np.ndarray:
    """Displacement (K, 2) at every point, interpolated from ``residuals`` (F, 2) at ``fixed``.

    Args:
        points: (K, 2) where the network puts the landmarks now (the field's sample positions).
        fixed: (F,) indices of the user-fixed landmarks.
        residuals: (F, 2) user position minus the network's position at each fixed landmark.
        length_px: the kernel's length scale in the points' units; <= 0 gives no field.
        noise: observation noise relative to the kernel's variance (0 = exact interpolation).
    """
    points = np.asarray(points, float)
    fixed = np.asarray(fixed, dtype=int)
    if length_px <= 0 or fixed.size == 0:
        return np.zeros_like(points)

    def kernel(a, b):
        squared = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-squared / (2.0 * length_px**2))

    anchors = points[fixed]
    weights = np.linalg.solve(kernel(anchors, anchors) + noise * np.eye(len(fixed)), np.asarray(residuals, float))
    return kernel(points, anchors) @ weights


def apply_correction_field(points: np.ndarray, fixed_positions: dict, length: float, noise: float) -> np.ndarray:
    """The network's points with the unfixed ones moved by the field of the fixed ones' residuals.

    ``fixed_positions``: {landmark: (x, y) where the user put it}; ``length``: the field's length
    scale as a fraction of the landmarks' extent (0 = off). Fixed points are returned unchanged
    here (the session puts them exactly where the user put them).
    """
    points = np.asarray(points, float)
    if length <= 0 or not fixed_positions:
        return points
    fixed = np.array(sorted(fixed_positions), dtype=int)
    residuals = np.array([fixed_positions[int(k)] for k in fixed], float) - points[fixed]
    moved = points + correction_field(points, fixed, residuals, length * landmark_extent(points), noise)
    moved[fixed] = points[fixed]
    return moved
