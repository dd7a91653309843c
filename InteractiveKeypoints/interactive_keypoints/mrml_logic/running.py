"""Running the model for a point list through a runner, and writing what it returns.

Every model run of a list (detect, a correction, a preview, undo ...) goes through
:meth:`ModelRuns.submit`: the list is busy until its ``finish``, which writes the outcome
into MRML and then starts whatever the list's :class:`~.correction_queue.CorrectionQueue`
has next (drops that arrived meanwhile, the dragged point's latest position), so a drag is
never lost. ``blocking=True`` runs through the blocking runner and raises the model's
error; ``blocking=False`` goes through ``runner`` and reports errors.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .correction_queue import CorrectionSettings, LogicBusyError, Run
from .runners import Runner, run_inline
from .tracked import TrackedList, TrackedLists

log = logging.getLogger(__name__)


class ModelRuns:
    """Submits computations for the tracked lists and writes their results.

    ``show(tracked, prediction)`` writes a prediction into the list (and what follows it);
    ``report(message)`` tells the user of a problem, ``run_failed(message)`` of a failed
    non-blocking run in particular; ``busy_changed(node, busy)`` follows every run.
    """

    def __init__(
        self,
        lists: TrackedLists,
        settings: CorrectionSettings,
        show: Callable[[TrackedList, Any], None],
        report: Callable[[str], None],
        run_failed: Callable[[str], None],
        busy_changed: Callable[[Any, bool], None],
    ):
        self.lists = lists
        self.settings = settings
        self.show = show
        self.report = report
        self.run_failed = run_failed
        self.busy_changed = busy_changed
        self.runner: Runner = run_inline  # replaced by a ThreadedRunner in the GUI
        self.blocking_runner: Runner = run_inline  # blocking calls; a batch may wait on a thread

    @contextlib.contextmanager
    def blocking_through(self, runner: Runner):
        """Blocking runs go through ``runner`` meanwhile (a batch that keeps a GUI live)."""
        self.blocking_runner = runner
        try:
            yield
        finally:
            self.blocking_runner = run_inline

    def run_next(self, tracked: TrackedList, drops: bool | None = None, blocking: bool = False):
        """Start what the list's queue has next: a preview during a drag, else the drops as one
        correction (``drops``: run them even with auto-refine off; default: auto-refine)."""
        run = tracked.queue.next_run(self.settings.auto_refine if drops is None else drops)
        if run is None:
            return
        session = tracked.session
        assert session is not None  # a list with drops or a drag has had its detection
        if run.preview:
            self.submit(tracked, lambda: session.preview(run.fixes), blocking, run=run, what="preview")
            return

        def compute():
            session.end_preview()  # the drop replaces the drag's previews: one undo step per correction
            return session.refine(run.fixes) if run.fixes else session.prediction

        self.submit(tracked, compute, blocking, run=run, what="correction")

    def submit(
        self,
        tracked: TrackedList,
        compute: Callable[[], Any],
        blocking: bool,
        on_done: Callable[[Any], None] | None = None,
        run: Run | None = None,
        what: str = "model run",
    ):
        """Run ``compute`` (session only, no MRML) through the runner; write its result into
        MRML. ``run``: the queue's run it carries out; ``what`` names it in the log."""
        if tracked.queue.busy:
            raise LogicBusyError(f"the model is still running on {tracked.node.GetName()!r}")
        tracked.queue.start(run)
        self.busy_changed(tracked.node, True)
        started = time.perf_counter()
        raised: list[Exception] = []
        model_seconds: list[float] = []

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
            tracked.queue.finish(run)
            self.busy_changed(tracked.node, False)
            if not self.lists.is_current(tracked):
                return  # detached or re-detected meanwhile: the result is stale
            if on_done is not None:
                on_done(outcome)
            if isinstance(outcome, Exception):
                self._failed(tracked, outcome, run, raised if blocking else None)
            else:
                self.show(tracked, outcome)
            if not blocking:  # whatever arrived meanwhile runs next: the latest drop or drag position wins
                self.run_next(tracked)

        (self.blocking_runner if blocking else self.runner)(timed_compute, finish)
        if raised:
            raise raised[0]

    def _failed(self, tracked: TrackedList, error: Exception, run: Run | None, raised: list[Exception] | None):
        """Show the list as it was; a blocking call raises the error (into ``raised``), else
        it is reported."""
        if run is not None and not run.preview:  # the model refused these drops: put the points back
            for k in run.fixes:
                tracked.put_back(k, None)
        if tracked.prediction is not None:
            self.show(tracked, tracked.prediction)
        if raised is not None:
            raised.append(error)
            return
        message = f"{tracked.node.GetName()}: {error}"
        self.report(message)
        self.run_failed(message)
