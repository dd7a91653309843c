"""Clinical measurements of a point list, shown in MRML.

When the model's ``model.json`` names a measurement set (Cobb angles, ceph analysis;
:mod:`interactive_keypoints.measurements`), the measurements are recomputed after every
write of points (detect, refine, undo, redo, reset) into a table node referenced from the
point list, and the lines of the selected measurement are drawn as locked markups lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import vtk

from ..conventions import MEASUREMENT_COLOR
from .coordinates import control_point_positions, ijk_to_ras_matrix, pixels_to_ras, ras_to_pixels
from .tracked import TrackedList, TrackedLists
from .volumes import remove_with_children, volume_spacing

# point list -> its measurements table / the line nodes drawn for the selected measurement
MEASUREMENTS_REFERENCE_ROLE = "InteractiveKeypoints.Measurements"
MEASUREMENT_LINE_ROLE = "InteractiveKeypoints.MeasurementLine"
MEASUREMENT_COLUMNS = ("Measurement", "Value", "Unit", "Class", "Landmarks")
MEASUREMENT_LINE_COLOR = MEASUREMENT_COLOR  # the PNG overlays draw the same lines in the same colour


class MeasurementDisplay:
    """The measurements table and lines of each point list.

    ``scene()`` is the logic's scene, ``model_config()`` the chosen model's ModelConfig
    (for points given as pixels, and lists not tracked).
    """

    def __init__(self, scene: Callable[[], Any], lists: TrackedLists, model_config: Callable[[], Any]):
        self.scene = scene
        self.lists = lists
        self.model_config = model_config

    def measurement_set(self, point_list_node=None) -> str:
        """The measurement set ("aasce-cobb", "isbi-ceph" or "" for none) of a tracked point
        list's own model (a list keeps the model it was detected with when another is chosen),
        or of the chosen model."""
        tracked = self.lists.find(point_list_node)
        if tracked is not None and tracked.config is not None:
            return tracked.measurement_set
        return self.model_config().measurements

    def measurements(self, points, volume_node=None) -> list:
        """The clinical measurements (``Measurement`` records) of a point list's current
        positions (its own model's set), or of (K, 2) points in original pixels with the chosen
        model's set (``volume_node`` then gives spacing and image height; without it lengths
        stay in pixels)."""
        from ..measurements import measure

        if isinstance(points, (np.ndarray, list, tuple)):
            measurement_set = self.measurement_set()
            pixels, volume = np.asarray(points, dtype=float), volume_node
        else:
            measurement_set = self.measurement_set(points)
            volume = volume_node or self.lists.volume_of(points)
            pixels = ras_to_pixels(control_point_positions(points), ijk_to_ras_matrix(volume))
        spacing = height = None
        if volume is not None:
            spacing = volume_spacing(volume)[0]  # None (lengths in pixels) when the file had none
            height = volume.GetImageData().GetDimensions()[1] if volume.GetImageData() is not None else None
        return measure(pixels, measurement_set, spacing=spacing, image_height=height)

    def measurement_table(self, point_list_node):
        """The list's measurements table node (created on first use), or None when the
        model has no measurement set."""
        if not self.measurement_set(point_list_node):
            return None
        table = point_list_node.GetNodeReference(MEASUREMENTS_REFERENCE_ROLE)
        if table is None:
            scene = self.scene()
            table = scene.AddNewNodeByClass(
                "vtkMRMLTableNode", scene.GenerateUniqueName(point_list_node.GetName() + " measurements")
            )
            point_list_node.SetNodeReferenceID(MEASUREMENTS_REFERENCE_ROLE, table.GetID())
        return table

    def select_measurement(self, point_list_node, name: str):
        """Draw the lines of measurement ``name`` ("" hides them); they follow every update."""
        tracked = self.lists.get(point_list_node)
        if name and name not in [m.name for m in self.measurements(point_list_node)]:
            raise ValueError(f"no measurement {name!r} for point list {point_list_node.GetName()!r}")
        tracked.selected_measurement = name
        self._draw_measurement_lines(tracked, self.measurements(point_list_node) if name else [])

    def measurement_lines(self, point_list_node) -> list:
        """The line nodes drawn for the selected measurement."""
        return [
            point_list_node.GetNthNodeReference(MEASUREMENT_LINE_ROLE, i)
            for i in range(point_list_node.GetNumberOfNodeReferences(MEASUREMENT_LINE_ROLE))
        ]

    def update(self, tracked: TrackedList):
        """Refill the table (and the selected lines) from the points just written."""
        node = tracked.node
        table = self.measurement_table(node)
        if table is None or node.GetNumberOfControlPoints() != tracked.num_keypoints:
            return
        records = self.measurements(node, tracked.volume)
        was_modifying = table.StartModify()
        table.RemoveAllColumns()
        for name in MEASUREMENT_COLUMNS:
            column = vtk.vtkStringArray()
            column.SetName(name)
            table.AddColumn(column)
        for row, m in enumerate(records):
            table.AddEmptyRow()
            value = f"{m.value:.3f}" if m.unit == "ratio" else f"{m.value:.1f}"
            cells = (m.name, value, m.unit, m.category, ", ".join(node.GetNthControlPointLabel(k) for k in m.landmarks))
            for column, text in enumerate(cells):
                table.SetCellText(row, column, text)
        table.SetLocked(True)  # a computed result: edits would be overwritten by the next drag
        table.EndModify(was_modifying)
        if tracked.selected_measurement:
            self._draw_measurement_lines(tracked, records)

    def _draw_measurement_lines(self, tracked: TrackedList, records):
        node = tracked.node
        chosen = next((m for m in records if m.name == tracked.selected_measurement), None)
        segments = chosen.lines if chosen is not None else ()
        name = chosen.name if chosen is not None else ""
        lines = self.measurement_lines(node)
        while len(lines) > len(segments):  # fewer lines than before: drop the extra ones
            extra = lines.pop()
            node.RemoveNthNodeReferenceID(MEASUREMENT_LINE_ROLE, len(lines))
            remove_with_children(self.scene(), extra)
        while len(lines) < len(segments):
            line = self.scene().AddNewNodeByClass("vtkMRMLMarkupsLineNode")
            line.CreateDefaultDisplayNodes()
            if line.GetDisplayNode() is not None:
                line.GetDisplayNode().SetColor(*MEASUREMENT_LINE_COLOR)
                line.GetDisplayNode().SetSelectedColor(*MEASUREMENT_LINE_COLOR)
                line.GetDisplayNode().SetPropertiesLabelVisibility(False)  # the table names them
            line.SetLocked(True)  # drawn from the points: drag the points, not the line
            node.AddNodeReferenceID(MEASUREMENT_LINE_ROLE, line.GetID())
            lines.append(line)
        for i, (line, segment) in enumerate(zip(lines, segments)):
            ends = pixels_to_ras(np.array(segment), tracked.ijk_to_ras)
            was_modifying = line.StartModify()
            line.SetName(f"{node.GetName()} {name} {i + 1}")
            line.SetAndObserveTransformNodeID(node.GetTransformNodeID())
            line.RemoveAllControlPoints()
            for end in ends:
                line.AddControlPoint(*end)
            line.EndModify(was_modifying)
