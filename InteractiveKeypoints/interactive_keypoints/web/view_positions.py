"""Where points are drawn in a slice view, in view pixels.

The browser shows the view's render window as an image of the same aspect, so a test
(or any client) maps view pixels to page pixels with the image element's bounding box.
"""

from __future__ import annotations

import numpy as np


def matrix_array(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ras_to_view_xy(slice_node, ras) -> np.ndarray:
    """(K, 3) RAS -> (K, 2) view pixels (X right, Y up from the bottom-left corner)."""
    ras = np.asarray(ras, dtype=float).reshape(-1, 3)
    ras_to_xy = np.linalg.inv(matrix_array(slice_node.GetXYToRAS()))
    return (np.column_stack([ras, np.ones(len(ras))]) @ ras_to_xy.T)[:, :2]
