"""Drag tracking: turns the markups events of a point list into corrections.

A user drag (``PointStartInteractionEvent`` ... ``PointEndInteractionEvent``) makes the
dragged point user-fixed and queues it for the model; a press and release without a move
(Slicer sends the same events for a plain click) is not a correction; a drop outside the
image is put back and reported. With ``refine_while_dragging`` each move of the dragged
point (``PointModifiedEvent``) asks for a preview run.

Two changes come without a release:

* Slicer's snap-to-slice key ("s" on a point, ``vtkSlicerMarkupsWidget::ProcessControlPointSnapToSlice``)
  starts an interaction and moves the point, but never ends it. The next start ends it, and
  :meth:`DragEvents.end_interaction` ends it on request (the panel asks once no mouse button
  is down), as a drop where the point is.
* A coordinate typed in the Markups module's table (or set by a script) moves a point with
  ``PointModifiedEvent`` alone: a move the logic did not make is the user's correction, a drop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import slicer
import vtk

from .coordinates import control_point_positions, ras_to_pixels
from .correction_queue import CorrectionSettings
from .running import ModelRuns
from .tracked import TrackedList, TrackedLists

_MARKUPS = slicer.vtkMRMLMarkupsNode
# a press and release without a move (a plain click) must not count as a correction
CLICK_TOLERANCE_PX = 1e-3


class DragEvents:
    """Observers on each tracked list: drags, drops and edits go into the list's queue.

    ``mark_fixed(tracked, fixes)`` shows dropped points as user-fixed at once; ``report``
    tells the user of a refused drop; ``drag_started(node)`` follows every interaction start.
    """

    def __init__(
        self,
        lists: TrackedLists,
        settings: CorrectionSettings,
        runs: ModelRuns,
        mark_fixed: Callable[[TrackedList, dict], None],
        report: Callable[[str], None],
        drag_started: Callable[[Any], None],
    ):
        self.lists = lists
        self.settings = settings
        self.runs = runs
        self.mark_fixed = mark_fixed
        self.report = report
        self.drag_started = drag_started

    def observe(self, tracked: TrackedList):
        node = tracked.node

        def on_start(caller, event):
            self._on_drag_start(tracked)

        def on_end(caller, event):
            self._on_drag_end(tracked)

        @vtk.calldata_type(vtk.VTK_INT)
        def on_modified(caller, event, index=None):
            self._on_point_modified(tracked, index)

        tracked.observer_tags = [
            node.AddObserver(_MARKUPS.PointStartInteractionEvent, on_start),
            node.AddObserver(_MARKUPS.PointEndInteractionEvent, on_end),
            node.AddObserver(_MARKUPS.PointModifiedEvent, on_modified),
        ]

    def is_dragging(self, point_list_node=None) -> bool:
        """Whether a view interaction is open on this list (any list when None)."""
        lists = list(self.lists) if point_list_node is None else [self.lists.find(point_list_node)]
        return any(tracked is not None and tracked.queue.dragging is not None for tracked in lists)

    def end_interaction(self, point_list_node=None):
        """End an interaction the view started and never ended (snap to slice), on this list
        or on every list: a moved point is a drop, as at a mouse release."""
        lists = list(self.lists) if point_list_node is None else [self.lists.find(point_list_node)]
        for tracked in lists:
            if tracked is not None and tracked.queue.dragging is not None:
                self._on_drag_end(tracked)

    # ------------------------------------------------------------------ events

    def _on_drag_start(self, tracked: TrackedList):
        if tracked.writing:
            return
        if tracked.queue.dragging is not None:  # the last interaction never ended (snap to slice)
            self._on_drag_end(tracked)
        k = _active_index(tracked)
        tracked.queue.start_drag(k, control_point_positions(tracked.node)[k] if k is not None else None)
        self.drag_started(tracked.node)

    def _on_point_modified(self, tracked: TrackedList, index):
        if tracked.writing:
            return
        if tracked.queue.dragging is None:
            self._take_edits(tracked, index)
        elif self.settings.refine_while_dragging and index is not None and index == tracked.queue.dragging:
            tracked.queue.move(index, tracked.pixel_of(index))
            self.runs.run_next(tracked)

    def _take_edits(self, tracked: TrackedList, index):
        """Points moved without a drag (the Markups table, a script): drops where they are now."""
        if tracked.shown is None or len(tracked.shown) != tracked.node.GetNumberOfControlPoints():
            return  # nothing of ours written yet
        candidates = range(len(tracked.shown)) if index is None else [index]
        edits = {}
        for k in candidates:
            if not 0 <= k < tracked.num_keypoints:
                continue
            xy = tracked.pixel_of(k)
            if np.hypot(*(np.asarray(xy) - tracked.shown[k])) <= CLICK_TOLERANCE_PX:
                continue  # a label, state or lock change
            try:
                tracked.check_inside(k, xy)
            except ValueError as error:
                tracked.put_back(k, tracked.shown_ras(k))
                self.report(str(error))
                continue
            edits[k] = xy
        if edits:
            self._drop(tracked, edits)

    def _on_drag_end(self, tracked: TrackedList):
        if tracked.writing:
            return
        k, start = tracked.queue.end_drag()
        k = k if k is not None else _active_index(tracked)
        if k is None:
            return
        xy = tracked.pixel_of(k)
        if start is not None and _is_click(tracked, start, xy):
            # Slicer sends Start/EndInteraction on a plain click too: nothing was corrected
            self.runs.run_next(tracked, drops=True)  # replaces previews of this drag, if any
            return
        try:
            tracked.check_inside(k, xy)
        except ValueError as error:
            tracked.put_back(k, start)
            self.report(str(error))
            self.runs.run_next(tracked, drops=True)  # replaces previews of this drag, if any
            return
        self._drop(tracked, {k: xy})

    def _drop(self, tracked: TrackedList, fixes: dict):
        tracked.queue.drop(fixes)
        self.mark_fixed(tracked, fixes)
        if self.settings.auto_refine:
            self.runs.run_next(tracked, drops=True)


def _active_index(tracked: TrackedList) -> int | None:
    display = tracked.node.GetDisplayNode()
    index = display.GetActiveControlPoint() if display is not None else -1
    if not 0 <= index < tracked.num_keypoints:
        return None
    return index


def _is_click(tracked: TrackedList, start_ras, xy) -> bool:
    start_xy = ras_to_pixels(start_ras, tracked.ijk_to_ras)[0]
    return bool(np.hypot(*(np.asarray(xy) - start_xy)) <= CLICK_TOLERANCE_PX)
