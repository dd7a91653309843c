"""One point list under the logic's control, the lists by node, and the writes of points
and states into a list.

Every write goes through :meth:`TrackedList.own_writes`: our own changes fire markups events
too, and the drag handlers must ignore them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..conventions import inside_image
from .coordinates import pixels_to_ras, ras_to_pixels
from .correction_queue import CorrectionQueue, LogicBusyError
from .states import write_state
from .volumes import reference_volume

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..session import KeypointSession, Prediction


@dataclass
class TrackedList:
    """What the logic knows about one point list. Each part has one owner: ``queue`` the
    corrections on their way to the model (:mod:`.correction_queue`), ``writing`` / ``shown``
    the writes below, ``selected_measurement`` the measurement display, ``suggested`` the
    guidance."""

    node: Any  # vtkMRMLMarkupsFiducialNode
    volume: Any  # its radiograph's volume node
    session: KeypointSession | None  # None until the first computation made it
    ijk_to_ras: np.ndarray
    size: tuple[int, int]  # (H, W) of the radiograph
    config: ModelConfig | None = None  # of the list's model: kept when another model is chosen
    observer_tags: list = field(default_factory=list)
    queue: CorrectionQueue = field(init=False)
    writing: bool = False  # re-entrancy guard: our own MRML writes fire events too
    latency: float | None = None  # seconds of the last computation
    selected_measurement: str = ""  # name of the measurement whose lines are drawn
    suggested: int | None = None  # the point next_point() gave a halo, until it is fixed
    shown: np.ndarray | None = None  # (K, 2) pixels of the points as the logic last left them
    unpropagated: frozenset[int] = frozenset()  # fixed points beyond the propagation limit, as last reported

    def __post_init__(self):
        self.queue = CorrectionQueue(self.size)

    @property
    def prediction(self) -> Prediction | None:
        return self.session.prediction if self.session is not None else None

    @property
    def attached_session(self) -> KeypointSession:
        """The session, which an idle tracked list has (its detection made it)."""
        if self.session is None:
            raise ValueError(f"point list {self.node.GetName()!r} is not attached: run detect() or attach() first")
        return self.session

    @property
    def num_keypoints(self) -> int:
        return len(self.prediction.points) if self.prediction is not None else 0

    @property
    def measurement_set(self) -> str:
        """The measurement set of the list's own model ("" for none)."""
        return self.config.measurements if self.config is not None else ""

    # ------------------------------------------------------------------ reading

    def pixel_of(self, k: int) -> tuple[float, float]:
        """Point k's current position in the list, in image pixels (x, y)."""
        point = [0.0, 0.0, 0.0]
        self.node.GetNthControlPointPosition(k, point)
        x, y = ras_to_pixels(point, self.ijk_to_ras)[0]
        return float(x), float(y)

    def shown_ras(self, k: int):
        """RAS of point k where the logic last left it."""
        return pixels_to_ras(self.shown[k], self.ijk_to_ras)[0] if self.shown is not None else None

    def check_inside(self, k: int, xy):
        """Raise ``OutsideImageError`` (a ValueError) naming the landmark when xy is off the image."""
        if not inside_image(xy, self.size):
            from ..session import OutsideImageError

            height, width = self.size
            name = self.prediction.names[k] if self.prediction is not None else f"#{k}"
            raise OutsideImageError(
                f"landmark {name!r} dropped at pixel ({xy[0]:.1f}, {xy[1]:.1f}), outside the "
                f"{width} x {height} image; it was put back"
            )

    # ------------------------------------------------------------------ writing

    def pixels(self) -> np.ndarray:
        """(N, 2) pixels of all points in the list now."""
        positions = np.zeros((self.node.GetNumberOfControlPoints(), 3))
        for k in range(len(positions)):
            self.node.GetNthControlPointPosition(k, positions[k])
        return ras_to_pixels(positions, self.ijk_to_ras)

    def remember_shown(self):
        """The positions now in the list are the logic's (or an accepted correction's): a later
        change that is not ours is the user's."""
        self.shown = self.pixels()

    @contextlib.contextmanager
    def own_writes(self):
        """Our own changes fire markups events: ignore them, and batch them into one."""
        was_writing, self.writing = self.writing, True
        was_modifying = self.node.StartModify()
        try:
            yield
        finally:
            self.node.EndModify(was_modifying)
            self.writing = was_writing
            self.remember_shown()

    def put_back(self, k: int, ras):
        """Return point k to ``ras`` (its position before the drag), or to the model's."""
        if ras is None:
            if k in self.queue.pending:
                ras = pixels_to_ras(self.queue.pending[k], self.ijk_to_ras)[0]
            elif self.prediction is not None:
                ras = pixels_to_ras(self.prediction.points[k], self.ijk_to_ras)[0]
            else:
                return
        with self.own_writes():
            self.node.SetNthControlPointPosition(k, *ras)

    def write_prediction(self, prediction, low_confidence: float):
        """Write a prediction into the point list. Points the user holds (being dragged, or
        dropped and waiting for the model) keep the user's position."""
        node = self.node
        held = self.queue.held()
        positions = pixels_to_ras(prediction.points, self.ijk_to_ras)
        with self.own_writes():
            if node.GetNumberOfControlPoints() != len(positions):
                node.SetFixedNumberOfControlPoints(False)  # a locked list refuses the rewrite
                node.RemoveAllControlPoints()
                for k, name in enumerate(prediction.names):
                    node.AddControlPoint(*positions[k], name)
            # one point per landmark: adding or deleting points (place toolbar, context
            # menu) would shift every later index, so the count is locked
            node.SetFixedNumberOfControlPoints(True)
            for k in range(len(positions)):
                node.SetNthControlPointLabel(k, prediction.names[k])
                if k not in held:
                    node.SetNthControlPointPosition(k, *positions[k])
                fixed = bool(prediction.fixed[k]) or k in self.queue.pending
                write_state(node, k, fixed, float(prediction.confidence[k]), low_confidence)

    def write_fixed(self, indices, low_confidence: float):
        """Mark points user-fixed before the model has run on them (confidence unknown)."""
        with self.own_writes():
            for k in indices:
                write_state(self.node, k, True, np.nan, low_confidence)


class TrackedLists:
    """The point lists under control, by node ID (what every part of the logic looks up)."""

    def __init__(self):
        self._by_id: dict[str, TrackedList] = {}

    def __iter__(self):
        return iter(list(self._by_id.values()))

    def add(self, tracked: TrackedList):
        self._by_id[tracked.node.GetID()] = tracked

    def pop(self, node) -> TrackedList | None:
        return self._by_id.pop(node.GetID(), None)

    def find(self, node) -> TrackedList | None:
        """The list's entry, or None (also for no node)."""
        return self._by_id.get(node.GetID()) if node is not None else None

    def is_current(self, tracked: TrackedList) -> bool:
        """Still the entry of its node (not detached or detected again since)."""
        return self._by_id.get(tracked.node.GetID()) is tracked

    def get(self, node) -> TrackedList:
        """The entry of an attached list; a clear error for none or one not attached."""
        if node is None:
            raise ValueError("no point list given")
        tracked = self._by_id.get(node.GetID())
        if tracked is None or (tracked.session is None and not tracked.queue.busy):
            raise ValueError(f"point list {node.GetName()!r} is not attached: run detect() or attach() first")
        return tracked

    def idle(self, node) -> TrackedList:
        """The entry of an attached list the model is not running on."""
        tracked = self.get(node)
        if tracked.queue.busy:
            raise LogicBusyError(f"the model is still running on {node.GetName()!r}")
        return tracked

    def volume_of(self, node):
        """The radiograph of a list: its detection's, else the one it references."""
        tracked = self.find(node)
        if tracked is not None:
            return tracked.volume
        volume = reference_volume(node)
        if volume is None:
            raise ValueError(f"point list {node.GetName()!r} has no radiograph volume to convert to pixels")
        return volume
