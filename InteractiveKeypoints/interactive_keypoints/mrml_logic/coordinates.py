"""Coordinates: radiograph pixels (x, y) <-> RAS through a volume's IJK-to-RAS matrix, and
the control points of a point list as an array."""

from __future__ import annotations

import numpy as np
import slicer.util
import vtk


def ijk_to_ras_matrix(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def pixels_to_ras(points_xy, ijk_to_ras: np.ndarray) -> np.ndarray:
    """(K, 2) sub-pixel (x, y) = IJK (x, y, 0) -> (K, 3) RAS."""
    points_xy = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    ijk = np.column_stack([points_xy, np.zeros(len(points_xy)), np.ones(len(points_xy))])
    return (ijk @ ijk_to_ras.T)[:, :3]


def ras_to_pixels(points_ras, ijk_to_ras: np.ndarray) -> np.ndarray:
    """(K, 3) RAS -> (K, 2) sub-pixel (x, y), projected on the image plane."""
    points_ras = np.asarray(points_ras, dtype=float).reshape(-1, 3)
    ras = np.column_stack([points_ras, np.ones(len(points_ras))])
    return (ras @ np.linalg.inv(ijk_to_ras).T)[:, :2]


def control_point_positions(node) -> np.ndarray:
    """(N, 3) local (untransformed) RAS positions of all control points."""
    positions = np.zeros((node.GetNumberOfControlPoints(), 3))
    for k in range(len(positions)):
        point = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(k, point)
        positions[k] = point
    return positions
