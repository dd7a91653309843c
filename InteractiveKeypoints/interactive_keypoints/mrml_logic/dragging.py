"""Drag tracking: turns the markups interaction events of a point list into corrections.

A user drag (``PointStartInteractionEvent`` ... ``PointEndInteractionEvent``) makes the
dragged point user-fixed and queues it for the model; a press and release without a move
(Slicer sends the same events for a plain click) is not a correction; a drop outside the
image is put back and reported. With ``refine_while_dragging`` each move of the dragged
point (``PointModifiedEvent``) asks for a preview run.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .coordinates import control_point_positions, ras_to_pixels
from .tracked import TrackedList

_MARKUPS = slicer.vtkMRMLMarkupsNode
# a press and release without a move (a plain click) must not count as a correction
CLICK_TOLERANCE_PX = 1e-3


class DragTracking:
    """Mixin of :class:`~.logic.KeypointsMRMLLogic`: observers on each tracked list.

    Uses from the logic: ``auto_refine``, ``refine_while_dragging``, ``_run_pending``,
    ``_run_preview`` (:class:`~.running.ModelRunning`), ``_mark_fixed`` and ``_report``.
    """

    def _observe(self, tracked: TrackedList):
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

    def _active_index(self, tracked: TrackedList) -> int | None:
        display = tracked.node.GetDisplayNode()
        index = display.GetActiveControlPoint() if display is not None else -1
        if not 0 <= index < tracked.num_keypoints:
            return None
        return index

    def _on_drag_start(self, tracked: TrackedList):
        if tracked.writing:
            return
        k = self._active_index(tracked)
        tracked.dragging = k
        tracked.preview = None
        if k is not None:
            tracked.drag_start = control_point_positions(tracked.node)[k]

    def _on_point_modified(self, tracked: TrackedList, index):
        if tracked.writing or not self.refine_while_dragging or index is None or index != tracked.dragging:
            return
        tracked.preview = (index, tracked.pixel_of(index))
        self._run_preview(tracked)

    def _on_drag_end(self, tracked: TrackedList):
        if tracked.writing:
            return
        k = tracked.dragging if tracked.dragging is not None else self._active_index(tracked)
        start = tracked.drag_start
        tracked.dragging, tracked.drag_start, tracked.preview = None, None, None
        if k is None:
            return
        xy = tracked.pixel_of(k)
        if start is not None and self._is_click(tracked, start, xy):
            # Slicer sends Start/EndInteraction on a plain click too: nothing was corrected
            self._run_pending(tracked, blocking=False)  # drops previews of this drag, if any
            return
        try:
            tracked.check_inside(k, xy)
        except ValueError as error:
            tracked.put_back(k, start)
            self._report(str(error))
            self._run_pending(tracked, blocking=False)  # drops previews of this drag, if any
            return
        tracked.pending[k] = xy
        self._mark_fixed(tracked, {k: xy})
        if self.auto_refine:
            self._run_pending(tracked, blocking=False)

    @staticmethod
    def _is_click(tracked: TrackedList, start_ras, xy) -> bool:
        start_xy = ras_to_pixels(start_ras, tracked.ijk_to_ras)[0]
        return bool(np.hypot(*(np.asarray(xy) - start_xy)) <= CLICK_TOLERANCE_PX)
