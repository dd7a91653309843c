"""Running the model for a point list through a runner, and what arrives meanwhile.

While a computation runs the list is busy: drops are queued in a pending slot (per point,
the latest wins) and refined together as soon as it finishes, so a drag is never lost;
the previews made while dragging are undone and replaced by the drop (one undo step per
correction). ``blocking=True`` runs through the blocking runner and raises the model's
error; ``blocking=False`` goes through ``runner`` and reports errors through ``on_error``.
"""

from __future__ import annotations

import logging
import time

from ..conventions import inside_image
from ..errors import KeypointsError
from .tracked import TrackedList

log = logging.getLogger(__name__)


class LogicBusyError(KeypointsError, RuntimeError):
    """An operation was asked for while the model is still running on this point list."""


class ModelRunning:
    """Mixin of :class:`~.logic.KeypointsMRMLLogic`: submits computations and writes
    their results.

    Uses from the logic: ``runner`` / ``_blocking_runner`` (:class:`~.runners.Runner`),
    ``auto_refine``, ``_tracked``, ``_apply``, ``_report``, ``on_run_failed``, ``on_busy``.
    """

    def _run_pending(self, tracked: TrackedList, blocking: bool):
        """Give the queued drops to the model (and drop the previews made while dragging)."""
        if tracked.busy or not (tracked.pending or tracked.preview_steps) or tracked.dragging is not None:
            return
        fixes = dict(tracked.pending)
        undo_previews = tracked.preview_steps
        tracked.preview_steps = 0
        session = tracked.session

        def compute():
            # previews of a drag are replaced by its drop: one undo step per correction
            for _ in range(undo_previews):
                session.undo()
            return session.refine(fixes) if fixes else session.prediction

        def on_done(outcome):
            for k in fixes:
                if tracked.pending.get(k) == fixes[k]:
                    del tracked.pending[k]

        self._submit(tracked, compute, blocking, on_done=on_done, drop_fixes=fixes, what="correction")

    def _run_preview(self, tracked: TrackedList):
        if tracked.busy or tracked.preview is None:
            return
        k, xy = tracked.preview
        tracked.preview = None
        if not inside_image(xy, tracked.size):
            return
        fixes = {**tracked.pending, k: xy}
        tracked.preview_steps += 1
        self._submit(tracked, lambda: tracked.session.refine(fixes), blocking=False, what="preview")

    def _submit(self, tracked: TrackedList, compute, blocking: bool, on_done=None, drop_fixes=None, what="model run"):
        """Run ``compute`` (session only) through the runner; write its result into MRML.
        ``what`` names the run in the log (detect, correction, undo ...)."""
        if tracked.busy:
            raise LogicBusyError(f"the model is still running on {tracked.node.GetName()!r}")
        self._set_busy(tracked, True)
        started = time.perf_counter()
        raised = []
        model_seconds = []

        def timed_compute():
            compute_started = time.perf_counter()
            try:
                return compute()
            finally:
                model_seconds.append(time.perf_counter() - compute_started)

        def finish(outcome):
            # what the user waits for: from the drop (or button) to the points in MRML,
            # including the wait for the worker and for the main thread's poll
            tracked.latency = time.perf_counter() - started
            log.info(
                "%s: %s: model %.0f ms, %.0f ms from request to display",
                tracked.node.GetName(),
                what,
                1000 * sum(model_seconds),
                1000 * tracked.latency,
            )
            self._set_busy(tracked, False)
            if self._tracked.get(tracked.node.GetID()) is not tracked:
                return  # detached or re-detected meanwhile: the result is stale
            if on_done is not None:
                on_done(outcome)
            if isinstance(outcome, Exception):
                if drop_fixes:  # the model refused these drops: put the points back
                    for k in drop_fixes:
                        tracked.put_back(k, None)
                if tracked.prediction is not None:
                    self._apply(tracked, tracked.prediction)
                if blocking:
                    raised.append(outcome)
                else:
                    message = f"{tracked.node.GetName()}: {outcome}"
                    self._report(message)
                    if self.on_run_failed is not None:
                        self.on_run_failed(message)
            else:
                self._apply(tracked, outcome)
            # whatever arrived meanwhile runs next: the latest drop or drag position wins
            if not blocking:
                if tracked.dragging is not None:
                    self._run_preview(tracked)
                elif (tracked.pending and self.auto_refine) or tracked.preview_steps:
                    self._run_pending(tracked, blocking=False)

        (self._blocking_runner if blocking else self.runner)(timed_compute, finish)
        if raised:
            raise raised[0]

    def _set_busy(self, tracked: TrackedList, busy: bool):
        tracked.busy = busy
        if self.on_busy is not None:
            self.on_busy(tracked.node, busy)
