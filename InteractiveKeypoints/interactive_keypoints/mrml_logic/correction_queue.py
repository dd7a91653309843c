"""What one point list has waiting for the model: pure Python, no MRML, no model.

The logic writes the user's gestures into the queue and asks it what to run next:

* a drop (a drag released, a coordinate typed, a confirm, a console ``refine``) waits in
  ``pending`` until the model runs it; per point the latest drop wins, and the drops that
  arrived while the model was busy go to it together, as one correction;
* during a drag, with refine-while-dragging, the dragged point's latest position waits for a
  preview run (older positions are skipped, a position off the image is no preview);
* a preview the list shows is replaced by the next correction: the drop, or the model's
  last committed prediction when the drag ends without one (a click, a refused drop).

The logic runs what :meth:`CorrectionQueue.next_run` returns (:mod:`.running`), between
:meth:`~CorrectionQueue.start` and :meth:`~CorrectionQueue.finish`; a list is busy from
one to the other, for every model run (detect, undo ... too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..conventions import inside_image
from ..errors import KeypointsError

XY = tuple[float, float]  # a position in image pixels (x, y)


class LogicBusyError(KeypointsError, RuntimeError):
    """An operation was asked for while the model is still running on this point list."""


@dataclass
class CorrectionSettings:
    """The user's choices of when the model runs (shared by every list of a logic)."""

    auto_refine: bool = True  # a drop runs the model at once (else it waits for update())
    refine_while_dragging: bool = False  # the dragged point's moves run previews


@dataclass(frozen=True)
class Run:
    """A model run the queue asked for: ``fixes`` are the points it fixes ({k: (x, y)})."""

    fixes: dict[int, XY] = field(default_factory=dict)
    preview: bool = False  # a preview of the dragged point (else a correction: the drops)


class CorrectionQueue:
    """The drops, drag and preview of one point list, and whether its model is running."""

    def __init__(self, size: tuple[int, int]):
        self.size = size  # (H, W) of the radiograph: a preview off the image is not run
        self.pending: dict[int, XY] = {}  # drops not given to the model yet
        self.busy = False  # a model run of this list is in progress
        self.dragging: int | None = None  # the point a view is dragging
        self.drag_start: object = None  # where it was when the drag started (the caller's coordinates)
        self.preview_shown = False  # the list shows a preview: the next correction replaces it
        self._preview_at: tuple[int, XY] | None = None  # latest dragged position not previewed yet

    # ------------------------------------------------------------------ the user

    def drop(self, fixes: dict[int, XY]):
        """Points the user fixed at these positions; they run with the next correction."""
        self.pending.update(fixes)

    def start_drag(self, index: int | None, start: object = None):
        """A view started dragging point ``index`` (None: no point is active), from ``start``."""
        self.dragging, self.drag_start, self._preview_at = index, start, None

    def move(self, index: int, xy: XY):
        """The dragged point is at ``xy`` now: preview it there at the next chance."""
        if index == self.dragging:
            self._preview_at = (index, xy)

    def end_drag(self) -> tuple[int | None, object]:
        """The drag is over: (the point it dragged, where it started). The drop, if it is one,
        is the caller's to make."""
        ended = (self.dragging, self.drag_start)
        self.dragging, self.drag_start, self._preview_at = None, None, None
        return ended

    def withdraw(self, indices):
        """Forget the drops of these points (they are unfixed)."""
        for k in indices:
            self.pending.pop(k, None)

    def cancel(self) -> bool:
        """Undo what has not reached the model: the drops and the preview shown. True when
        there was any (then the list must show the committed prediction again)."""
        had = bool(self.pending) or self.preview_shown
        self.pending.clear()
        self.preview_shown = False
        return had

    def held(self) -> set[int]:
        """Points the user holds and the model must not move: dropped, or being dragged."""
        return set(self.pending) | ({self.dragging} if self.dragging is not None else set())

    # ------------------------------------------------------------------ the model

    def next_run(self, drops: bool) -> Run | None:
        """What runs next, or None: during a drag, a preview of the dragged point's latest
        position; else a correction with the drops (when ``drops``, or when a preview must be
        replaced). Nothing while the model runs (``finish`` then asks again)."""
        if self.busy:
            return None
        if self.dragging is not None:
            if self._preview_at is None:
                return None
            k, xy = self._preview_at
            self._preview_at = None
            if not inside_image(xy, self.size):
                return None
            return Run({**self.pending, k: xy}, preview=True)
        if (self.pending and drops) or self.preview_shown:
            return Run(dict(self.pending))
        return None

    def start(self, run: Run | None = None):
        """A model run of this list begins: ``run`` from :meth:`next_run`, or None for any other
        (detect, undo, redo, unfix, reset: they replace a preview shown too)."""
        if self.busy:
            raise LogicBusyError("the model is still running on this point list")
        self.busy = True
        self.preview_shown = run is not None and run.preview

    def finish(self, run: Run | None = None):
        """The run is over (done or failed): its drops are no longer pending, unless a newer
        drop of the same point arrived meanwhile."""
        self.busy = False
        if run is not None and not run.preview:
            for k, xy in run.fixes.items():
                if self.pending.get(k) == xy:
                    del self.pending[k]
