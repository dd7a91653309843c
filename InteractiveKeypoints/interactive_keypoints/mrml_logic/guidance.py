"""Guided review: which point to check next, and its highlight in the views.

The engine scores every landmark of a prediction (``Prediction.review_score``, higher =
check first) and ranks the unfixed ones (:func:`interactive_keypoints.review.rank_for_review`).
Here that ranking meets the point list: points the user has dropped but the model has not
run on yet count as fixed, the suggested point gets a halo: a marker node (a locked
one-point list, a larger translucent disc in its own colour; the selected flag keeps
meaning user-fixed), and the slice views can be centred on it. Confirming a point is a correction, in :mod:`.logic`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import slicer

from .coordinates import control_point_positions
from .tracked import TrackedList, TrackedLists
from .volumes import remove_with_children

# point list -> the marker node that puts a halo around the suggested point
NEXT_POINT_ROLE = "InteractiveKeypoints.NextPoint"
NEXT_POINT_COLOR = (1.0, 0.2, 0.2)  # red: apart from the point, hover and measurement colours
NEXT_POINT_GLYPH_FACTOR = 3.5  # halo diameter / point diameter
# slice views fill every 2-D glyph (vtkSlicerMarkupsWidgetRepresentation2D): translucent,
# so the point beneath stays visible
NEXT_POINT_OPACITY = 0.55


class ReviewGuidance:
    """Next point, review order and the halo of each point list (``scene()``: the logic's)."""

    def __init__(self, scene: Callable[[], Any], lists: TrackedLists):
        self.scene = scene
        self.lists = lists

    def review_scores(self, point_list_node) -> np.ndarray | None:
        """(K,) "check next" score of each point (higher = check first); -inf for points
        the user fixed, also those dropped and waiting for the model. None before detection."""
        tracked = self.lists.get(point_list_node)
        if tracked.prediction is None:
            return None
        scores = np.array(tracked.prediction.review_score, dtype=float)
        scores[list(_held(tracked))] = -np.inf
        return scores

    def review_order(self, point_list_node) -> list[int]:
        """Every point index: the unfixed ones most suspicious first, then the fixed ones in
        landmark order (the point table sorted by the score)."""
        tracked = self.lists.get(point_list_node)
        ranked = _ranked(tracked)
        return ranked + [k for k in range(point_list_node.GetNumberOfControlPoints()) if k not in set(ranked)]

    def next_point(self, point_list_node) -> int | None:
        """The unfixed point to check next (the top of the ranking), with a halo in the views;
        None, and no halo, when every point is fixed."""
        tracked = self.lists.get(point_list_node)
        ranked = _ranked(tracked)
        tracked.suggested = ranked[0] if ranked else None
        self.update_marker(tracked)
        return tracked.suggested

    def suggested_point(self, point_list_node) -> int | None:
        """The point ``next_point`` suggested, while it is still unfixed; else None."""
        tracked = self.lists.find(point_list_node)
        return tracked.suggested if tracked is not None else None

    def next_point_marker(self, point_list_node):
        """The marker node that puts a halo around the suggested point, or None."""
        return point_list_node.GetNodeReference(NEXT_POINT_ROLE)

    def jump_to_point(self, point_list_node, index: int):
        """Centre every slice view on point ``index`` (what Slicer's markups logic does in
        ``JumpSlicesToNthPointInMarkup``: ``vtkMRMLSliceNode::JumpAllSlices``, centred)."""
        if not 0 <= int(index) < point_list_node.GetNumberOfControlPoints():
            raise ValueError(f"point list {point_list_node.GetName()!r} has no point {index}")
        world = [0.0, 0.0, 0.0]
        point_list_node.GetNthControlPointPositionWorld(int(index), world)
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene(), *world, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    def update_marker(self, tracked: TrackedList):
        """Keep the halo on the suggested point; drop the suggestion once it is fixed."""
        if tracked.suggested is not None and tracked.suggested in _held(tracked):
            tracked.suggested = None  # confirmed or moved: the user has checked it
        marker = self.next_point_marker(tracked.node)
        if tracked.suggested is None:
            if marker is not None:
                tracked.node.RemoveNodeReferenceIDs(NEXT_POINT_ROLE)
                remove_with_children(self.scene(), marker)
            return
        if marker is None:
            marker = self._new_marker(tracked.node)
        position = control_point_positions(tracked.node)[tracked.suggested]
        was_modifying = marker.StartModify()
        marker.SetName(f"{tracked.node.GetName()} next")
        marker.SetAndObserveTransformNodeID(tracked.node.GetTransformNodeID())
        marker.RemoveAllControlPoints()
        marker.AddControlPoint(*position, tracked.node.GetNthControlPointLabel(tracked.suggested))
        marker.EndModify(was_modifying)

    def _new_marker(self, node):
        marker = self.scene().AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        marker.CreateDefaultDisplayNodes()
        display, points_display = marker.GetDisplayNode(), node.GetDisplayNode()
        if display is not None:
            display.SetColor(*NEXT_POINT_COLOR)
            display.SetSelectedColor(*NEXT_POINT_COLOR)
            display.SetGlyphType(display.Circle2D)
            display.SetOpacity(NEXT_POINT_OPACITY)
            if points_display is not None:
                display.SetGlyphScale(NEXT_POINT_GLYPH_FACTOR * points_display.GetGlyphScale())
                display.SetGlyphSize(NEXT_POINT_GLYPH_FACTOR * points_display.GetGlyphSize())
            display.SetPointLabelsVisibility(False)  # the table names it
        # locked: the 2-D widget does not pick it, so drags still reach the point beneath
        marker.SetLocked(True)
        # a view aid, not data: out of node selectors and the Data module, not saved
        marker.SetHideFromEditors(True)
        marker.SetSaveWithScene(False)
        node.SetNodeReferenceID(NEXT_POINT_ROLE, marker.GetID())
        return marker


def _held(tracked: TrackedList) -> set[int]:
    """Points the user holds: fixed by the model's last run, dropped, or being dragged."""
    held = tracked.queue.held()
    if tracked.prediction is not None:
        held.update(int(k) for k in np.flatnonzero(tracked.prediction.fixed))
    return held


def _ranked(tracked: TrackedList) -> list[int]:
    if tracked.prediction is None:
        return []
    from ..review import rank_for_review  # the engine's ranking (imports torch)

    held = _held(tracked)
    return [k for k in rank_for_review(tracked.prediction) if k not in held]
