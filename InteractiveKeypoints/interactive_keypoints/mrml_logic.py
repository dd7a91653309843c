"""GUI-free MRML logic of the InteractiveKeypoints Slicer module.

Needs MRML (Slicer, or ``slicer-core`` from PyPI) but neither Qt nor the Slicer application,
so the same code runs in the module, in the Python console, in batch jobs and in tests.

One :class:`KeypointSession` per point list. A user drag (``PointEndInteractionEvent``)
makes the dragged point user-fixed and re-runs the model; only points that are not fixed
move. A press and release without a move is not a correction. The list's point count is
locked (one point per landmark), and a list removed from the scene releases its session. Inference is split so that it can run off the main thread:

* ``compute`` -- a closure over the session only (no MRML), run by ``runner``; for a
  detection it also loads the model and builds the session (image encoder), from a
  snapshot of the volume taken on the main thread;
* ``finish``  -- called on the main thread with the result, writes it into MRML.

Every call that runs the model (detect, attach, refine, update, unfix) takes ``blocking``:
True runs inline and raises errors (console, batch), False goes through ``runner`` like a
drag and reports errors through ``on_error`` (GUI, web). undo, redo and reset only move
in the session's history, so they never run the model and are always synchronous.

While a computation runs, drops are queued in a pending slot (per point, the latest wins)
and refined together as soon as it finishes: a drag is never lost.

Point state lives in the point list itself, so it is visible and saved in ``.mrk.json``:
the description is ``"user-fixed"`` or ``"predicted; confidence=0.93"`` (plus ``"; low
confidence"``), and the selected flag is on for user-fixed points (Slicer draws selected
and unselected points in two colours).

Clinical measurements (Cobb angles, ceph analysis; :mod:`.measurements`), when the model's
``model.json`` names a set, are recomputed after every write of points (detect, refine,
undo, redo, reset) into a table node referenced from the point list, and the lines of the
selected measurement are drawn as locked markups lines.

Engine modules that need torch are imported lazily: importing this module needs only
numpy, vtk and slicer.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import slicer.util
import vtk

from .markups import PREDICTED as STATE_PREDICTED
from .markups import USER_FIXED as STATE_FIXED
from .markups import format_description, parse_description

log = logging.getLogger(__name__)

LOW_CONFIDENCE_TAG = "low confidence"
# node reference point list -> radiograph (a reference, so that it survives scene save/load)
VOLUME_REFERENCE_ROLE = "InteractiveKeypoints.Volume"
POINT_LIST_SUFFIX = " keypoints"
# point list -> its measurements table / the line nodes drawn for the selected measurement
MEASUREMENTS_REFERENCE_ROLE = "InteractiveKeypoints.Measurements"
MEASUREMENT_LINE_ROLE = "InteractiveKeypoints.MeasurementLine"
MEASUREMENT_COLUMNS = ("Measurement", "Value", "Unit", "Class", "Landmarks")
MEASUREMENT_LINE_COLOR = (1.0, 0.25, 0.85)  # magenta: apart from both point colours
DEFAULT_LOW_CONFIDENCE = 0.5

# two colours: predicted points unselected (amber), user-fixed points selected (green)
PREDICTED_COLOR = (1.0, 0.75, 0.2)
FIXED_COLOR = (0.3, 1.0, 0.4)
_MARKUPS = slicer.vtkMRMLMarkupsNode
# a press and release without a move (a plain click) must not count as a correction
CLICK_TOLERANCE_PX = 1e-3


class LogicBusyError(RuntimeError):
    """An operation was asked for while the model is still running on this point list."""


# --------------------------------------------------------------------------- runners
# A runner is called as runner(compute, finish): it runs compute() (no MRML inside) and
# then calls finish(outcome) ON THE MAIN THREAD, outcome being compute's result or the
# exception it raised.


def run_inline(compute, finish):
    """Synchronous runner: compute and finish on the calling thread."""
    try:
        outcome = compute()
    except Exception as error:  # noqa: BLE001 - handed to finish, which reports it
        outcome = error
    finish(outcome)


class ThreadedRunner:
    """Runs computations one at a time on a worker thread.

    ``finish`` callbacks are not called from the worker: the main thread calls
    :meth:`poll` (Slicer: from a QTimer) and the finished ones run there, because MRML
    must only be touched from the main thread.

    Inside Slicer the Qt main loop holds the GIL while idle, so the worker only advances
    while the main thread waits in Python: ``poll(wait=...)`` blocks (GIL released) until a
    result arrives or ``wait`` seconds pass, which keeps the model at full speed while the
    GUI still gets its events between polls.
    """

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._in_flight = 0
        self._thread = threading.Thread(target=self._work, name="InteractiveKeypoints inference", daemon=True)
        self._thread.start()

    def __call__(self, compute, finish):
        self._in_flight += 1
        self._jobs.put((compute, finish))

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def _work(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            compute, finish = job
            try:
                outcome = compute()
            except Exception as error:  # noqa: BLE001 - delivered to finish on the main thread
                outcome = error
            self._done.put((finish, outcome))

    def poll(self, wait: float = 0.0) -> int:
        """Call the finish callbacks of completed computations; returns how many ran.

        ``wait`` > 0: while computations are in flight and none has finished yet, wait up
        to that many seconds for one, with the GIL released (the worker runs meanwhile)."""
        count = 0
        while True:
            try:
                if count == 0 and wait > 0 and self._in_flight > 0:
                    finish, outcome = self._done.get(timeout=wait)
                else:
                    finish, outcome = self._done.get_nowait()
            except queue.Empty:
                return count
            self._in_flight -= 1
            count += 1
            finish(outcome)

    def shutdown(self):
        self._jobs.put(None)


def waiting_runner(runner: ThreadedRunner, pump=None, wait: float = 0.02):
    """A runner for blocking calls that keeps a GUI live: the computation goes to
    ``runner`` (after any queued run, so the model is never used by two threads at once);
    the calling thread polls it, with the GIL released while it waits, and calls ``pump()``
    between polls (process GUI events, update a progress bar) until it is done."""

    def run(compute, finish):
        outcome = []
        runner(compute, outcome.append)
        while not outcome:
            runner.poll(wait=wait)
            if not outcome and pump is not None:
                pump()
        finish(outcome[0])

    return run


# -------------------------------------------------------------------------- geometry


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


def inside_image(xy, size) -> bool:
    """Whether (x, y) lies on the image: pixel centres are integers, edges at -0.5."""
    (height, width), (x, y) = size, xy
    return bool(-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5)


def control_point_positions(node) -> np.ndarray:
    """(N, 3) local (untransformed) RAS positions of all control points."""
    positions = np.zeros((node.GetNumberOfControlPoints(), 3))
    for k in range(len(positions)):
        point = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(k, point)
        positions[k] = point
    return positions


# ---------------------------------------------------------------------- point states


def describe_state(fixed: bool, confidence: float, low_confidence: float) -> str:
    """"user-fixed" or "predicted; confidence=0.930" (+ "; low confidence")."""
    if fixed:
        return STATE_FIXED
    text = format_description(STATE_PREDICTED, confidence)
    if confidence < low_confidence:
        text += f"; {LOW_CONFIDENCE_TAG}"
    return text


def point_states(node) -> tuple[list[str], np.ndarray]:
    """(states, confidence) read back from the point descriptions (NaN when unknown).

    Works for any point list written by this logic, also after a save and reload.
    """
    states, confidence = [], np.full(node.GetNumberOfControlPoints(), np.nan)
    for k in range(node.GetNumberOfControlPoints()):
        state, confidence[k] = parse_description(node.GetNthControlPointDescription(k))
        states.append(STATE_FIXED if state == STATE_FIXED else STATE_PREDICTED)
    return states, confidence


def is_low_confidence(description: str) -> bool:
    return LOW_CONFIDENCE_TAG in (description or "")


# ------------------------------------------------------------------- volumes <-> images


def reference_volume(point_list_node):
    """The radiograph a point list was detected on, or None."""
    return point_list_node.GetNodeReference(VOLUME_REFERENCE_ROLE)


@dataclass
class VolumeSnapshot:
    """A copy of a one-slice volume's pixels, taken on the main thread with numpy only
    (no torch), so that the conversion to a radiograph can run on the inference thread."""

    name: str
    pixels: np.ndarray  # (H, W) or (H, W, components)
    spacing: tuple[float, float]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)"""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def radiograph(self):
        """The engine ``Radiograph`` (grey, float32); imports the engine (torch)."""
        from .imaging import load_radiograph

        image = load_radiograph(self.pixels, spacing=self.spacing)
        image.path = self.name
        return image


def snapshot_volume(volume_node) -> VolumeSnapshot:
    """Copy the pixels of a one-slice scalar or RGB volume; refuses other volumes."""
    name = volume_node.GetName()
    image_data = volume_node.GetImageData()
    dims = image_data.GetDimensions() if image_data is not None else None
    if dims is None or dims[2] != 1:
        from .imaging import ImageError  # only on this error path: imports torch

        if dims is None:
            raise ImageError(f"volume {name!r} has no image data")
        raise ImageError(
            f"volume {name!r} has {dims[2]} slices; InteractiveKeypoints needs a single 2-D radiograph"
        )
    pixels = np.array(slicer.util.arrayFromVolume(volume_node)[0])  # a copy, never the live buffer
    return VolumeSnapshot(name, pixels, tuple(volume_node.GetSpacing()[:2]))


def radiograph_from_volume(volume_node):
    """The one-slice scalar or RGB volume as an engine ``Radiograph`` (grey, float32)."""
    return snapshot_volume(volume_node).radiograph()


def volume_ijk_to_ras(radiograph) -> np.ndarray:
    """IJK-to-RAS of a radiograph as ITK readers give it: LPS origin, axes (-x, -y)."""
    sx, sy = radiograph.spacing
    ox, oy = radiograph.origin
    return np.array([[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)


def add_volume_from_radiograph(scene, radiograph, name: str):
    """A scalar volume node holding the radiograph (float32, one slice)."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume_ijk_to_ras(radiograph)))
    slicer.util.updateVolumeFromArray(volume, radiograph.array[np.newaxis])  # 3-D keeps the dtype
    volume.CreateDefaultDisplayNodes()
    return volume


PHANTOM_VOLUME_NAME = "SpinePhantom"


def add_phantom_volume(scene, seed: int = 0, name: str = PHANTOM_VOLUME_NAME):
    """A generated spine radiograph (68 vertebra corners) as a volume: the module's sample
    data. numpy and scipy only, so Sample Data can offer it before torch is installed."""
    from .phantom import make_spine_phantom

    phantom = make_spine_phantom(seed)
    sx, sy = phantom.spacing
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-sx, -sy, 1.0, 1.0])))
    slicer.util.updateVolumeFromArray(volume, phantom.image.astype(np.float32)[np.newaxis])
    volume.CreateDefaultDisplayNodes()
    return volume


# ----------------------------------------------------------------------------- logic


@dataclass
class _Tracked:
    """What the logic knows about one point list."""

    node: object
    volume: object
    session: object  # KeypointSession; None until the first computation made it
    ijk_to_ras: np.ndarray
    size: tuple[int, int]  # (H, W) of the radiograph
    observer_tags: list = field(default_factory=list)
    busy: bool = False
    pending: dict = field(default_factory=dict)  # queued drops {k: (x, y)}; latest wins
    dragging: int | None = None  # index being dragged in a view
    drag_start: np.ndarray | None = None  # its RAS position when the drag started
    preview: tuple | None = None  # latest (k, xy) waiting for a refine-while-dragging run
    preview_steps: int = 0  # session steps made by previews of the current drag
    writing: bool = False  # re-entrancy guard: our own MRML writes fire events too
    latency: float | None = None  # seconds of the last computation
    selected_measurement: str = ""  # name of the measurement whose lines are drawn

    @property
    def prediction(self):
        return self.session.prediction if self.session is not None else None

    @property
    def num_keypoints(self) -> int:
        return len(self.prediction.points) if self.prediction is not None else 0


class KeypointsMRMLLogic:
    """Keypoint detection and interactive correction on MRML point lists.

    Console use (inside Slicer, ``scene`` defaults to ``slicer.mrmlScene``)::

        logic = KeypointsMRMLLogic()
        points = logic.detect(volumeNode)         # "<volume> keypoints", one point per landmark
        logic.refine(points, {3: (10.0, 20.0, 0.0)})  # RAS; point 3 becomes user-fixed
        logic.undo(points); logic.redo(points)
        logic.export(points, "/tmp/case.mrk.json")  # or .csv

    Callbacks (optional): ``on_error(message)`` for every problem (a refused drop, a failed
    run), ``on_run_failed(message)`` only when a model run on the runner failed (a model
    that does not load, a bad image: the GUI shows these as an error dialog),
    ``on_updated(node)`` after each write into MRML, ``on_busy(node, busy)``.
    """

    def __init__(self, scene=None, model=None, model_folder=None, device: str = "auto"):
        self._scene = scene
        self._model = model
        self.model_folder = model_folder
        self.device = device
        self.runner = run_inline  # replaced by a ThreadedRunner in the GUI
        self._blocking_runner = run_inline  # blocking calls; process_folder may wait on a thread
        self.auto_refine = True
        self.refine_while_dragging = False
        self.low_confidence = DEFAULT_LOW_CONFIDENCE
        self.on_error = None
        self.on_run_failed = None
        self.on_updated = None
        self.on_busy = None
        self._tracked: dict[str, _Tracked] = {}
        self._predictor = None  # one inference copy of the network, shared by all sessions
        # the model is loaded by the inference thread (detect) or a preloading thread (web)
        self._model_lock = threading.Lock()
        self._watched_scene = None  # (scene, observer tag): releases lists the user deletes

    # ------------------------------------------------------------------ model, scene

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    def set_model(self, model_folder=None, device: str | None = None):
        """Choose the model folder (None: the shipped default) and/or device; loaded lazily."""
        with self._model_lock:  # not while a thread is loading the previous choice
            self.model_folder = model_folder
            if device is not None:
                self.device = device
            self._model = None
            self._predictor = None

    def model(self):
        """The KeypointModel, loaded on first use (the session moves it to the device).

        Thread-safe: detect() calls it from the inference thread."""
        with self._model_lock:
            if self._model is None:
                from .model_folders import default_model_dir
                from .model_io import load_model

                self._model = load_model(self.model_folder or default_model_dir(), device="cpu")
            return self._model

    def model_config(self):
        """The chosen model's ModelConfig, without loading its weights if not loaded yet
        (a JSON read, so the main thread can check a point list against it)."""
        with self._model_lock:
            if self._model is not None:
                return self._model.config
            from .config import ModelConfig
            from .model_folders import CONFIG_FILE, default_model_dir  # not model_io: no torch here

            return ModelConfig.load(Path(self.model_folder or default_model_dir()) / CONFIG_FILE)

    def predictor(self):
        """The inference copy of the model on the chosen device, shared by all sessions."""
        from .inference import Predictor

        model = self.model()
        with self._model_lock:
            if self._predictor is None or self._predictor.model is not model:
                self._predictor = Predictor(model, self.device)
            return self._predictor

    # --------------------------------------------------------------------- detection

    def point_list_for(self, volume_node):
        """The point list named "<volume> keypoints", created when missing."""
        name = volume_node.GetName() + POINT_LIST_SUFFIX
        node = self.scene.GetFirstNode(name, "vtkMRMLMarkupsFiducialNode", False, True)
        return node if node is not None else self.new_point_list(name)

    def new_point_list(self, name: str):
        """An empty point list drawn in our two colours (predicted / user-fixed)."""
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", self.scene.GenerateUniqueName(name))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        if display is not None:
            display.SetColor(*PREDICTED_COLOR)
            display.SetSelectedColor(*FIXED_COLOR)
        return node

    def detect(self, volume_node, point_list_node=None, blocking: bool = True):
        """Place all landmarks of the model on the volume; returns the point list.

        Any previous correction history of that point list is dropped. With
        ``blocking=False`` the list is returned at once and filled when the model is done;
        loading the model and encoding the image happen off the calling thread too.
        """
        return self._start(volume_node, point_list_node, {}, blocking)

    def _start(self, volume_node, point_list_node, fixes: dict, blocking: bool):
        """New session for the point list: predict, then refine with ``fixes`` if any."""
        # snapshot on the main thread (MRML is read here only): a copy of the pixels, so
        # the computation never touches the volume's buffer; refuses multi-slice volumes.
        # Blocking calls check the image before any node changes; the GUI path leaves the
        # conversion (and the torch import it needs) to the inference thread.
        snapshot = snapshot_volume(volume_node)
        checked_image = snapshot.radiograph() if blocking else None
        node = point_list_node or self.point_list_for(volume_node)
        previous = self._tracked.get(node.GetID())
        if previous is not None and previous.busy:
            raise LogicBusyError(f"the model is still running on {node.GetName()!r}")
        self.detach(node)
        node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        tracked = _Tracked(
            node=node,
            volume=volume_node,
            session=None,
            ijk_to_ras=ijk_to_ras_matrix(volume_node),
            size=snapshot.size,
        )
        self._tracked[node.GetID()] = tracked
        self._observe(tracked)
        self._watch_scene()
        made = {}

        def compute():
            # loading the model and encoding the image (the session's constructor) are
            # the slow parts of a detection: they run here, off the main thread
            from .session import KeypointSession

            image = checked_image if checked_image is not None else snapshot.radiograph()
            session = KeypointSession(self.model(), image, predictor=self.predictor())
            made["session"] = session
            prediction = session.predict()
            return session.refine(fixes) if fixes else prediction

        def on_done(outcome):  # main thread: the session becomes visible with its result
            if not isinstance(outcome, Exception):
                tracked.session = made["session"]

        self._submit(tracked, compute, blocking, on_done=on_done)
        return node

    def attach(self, point_list_node, volume_node=None, blocking: bool = True):
        """Listen to drags on a point list (e.g. one loaded from .mrk.json).

        The session is re-synchronised with the list: its user-fixed points are given to
        the model and the predicted points are predicted again.
        """
        node = point_list_node
        if node.GetID() in self._tracked:
            return node
        volume_node = volume_node or reference_volume(node)
        if volume_node is None:
            raise ValueError(
                f"point list {node.GetName()!r} has no radiograph volume: pass volume_node to attach()"
            )
        states, _ = point_states(node)
        pixels = ras_to_pixels(control_point_positions(node), ijk_to_ras_matrix(volume_node))
        num_keypoints = self.model_config().num_keypoints  # the weights load off this thread
        if node.GetNumberOfControlPoints() not in (0, num_keypoints):
            raise ValueError(
                f"point list {node.GetName()!r} has {node.GetNumberOfControlPoints()} points "
                f"but the model places {num_keypoints}"
            )
        fixes = {k: tuple(pixels[k]) for k, state in enumerate(states) if state == STATE_FIXED}
        return self._start(volume_node, node, fixes, blocking)

    def detach(self, point_list_node):
        """Stop listening and forget the session of this point list."""
        tracked = self._tracked.pop(point_list_node.GetID(), None)
        if tracked is not None:
            for tag in tracked.observer_tags:
                tracked.node.RemoveObserver(tag)

    def forget_all(self):
        for node_id in list(self._tracked):
            self.detach(self._tracked[node_id].node)
        self._unwatch_scene()

    def _watch_scene(self):
        """Observe node removal: a point list deleted by the user releases its session."""
        scene = self.scene
        if self._watched_scene is not None and self._watched_scene[0] is scene:
            return
        self._unwatch_scene()

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def on_node_removed(caller, event, node=None):
            if node is None:
                return
            for tracked in list(self._tracked.values()):
                if tracked.node is node:
                    self.detach(node)

        self._watched_scene = (scene, scene.AddObserver(scene.NodeRemovedEvent, on_node_removed))

    def _unwatch_scene(self):
        if self._watched_scene is not None:
            scene, tag = self._watched_scene
            scene.RemoveObserver(tag)
            self._watched_scene = None

    def is_tracked(self, point_list_node) -> bool:
        return point_list_node is not None and point_list_node.GetID() in self._tracked

    def is_busy(self, point_list_node) -> bool:
        tracked = self._tracked.get(point_list_node.GetID())
        return bool(tracked and tracked.busy)

    def latency(self, point_list_node) -> float | None:
        tracked = self._tracked.get(point_list_node.GetID())
        return tracked.latency if tracked else None

    def prediction(self, point_list_node):
        """The model's current Prediction for this list (points in original pixels)."""
        return self._get(point_list_node).prediction

    def can_undo(self, point_list_node) -> bool:
        tracked = self._tracked.get(point_list_node.GetID())
        return bool(tracked and tracked.session and (tracked.pending or tracked.session.can_undo))

    def can_redo(self, point_list_node) -> bool:
        tracked = self._tracked.get(point_list_node.GetID())
        return bool(tracked and tracked.session and not tracked.pending and tracked.session.can_redo)

    # -------------------------------------------------------------------- correction

    def refine(self, point_list_node, ras_by_index: dict, blocking: bool = True):
        """Move points {k: (R, A, S)}, make them user-fixed and re-run the model.

        Raises ``OutsideImageError`` (a ValueError) and changes nothing when a position is
        outside the image.
        """
        tracked = self._get(point_list_node)
        fixes = {}
        for k, ras in ras_by_index.items():
            xy = tuple(ras_to_pixels(ras, tracked.ijk_to_ras)[0])
            self._check_inside(tracked, int(k), xy)
            fixes[int(k)] = xy
        with self._writing(tracked):
            for k, ras in ras_by_index.items():
                point_list_node.SetNthControlPointPosition(int(k), *ras[:3])
        tracked.pending.update(fixes)
        self._mark_fixed(tracked, fixes)
        self.update(point_list_node, blocking)

    def update(self, point_list_node, blocking: bool = False):
        """Run the model with the queued drops (the Update button when auto-refine is off)."""
        tracked = self._get(point_list_node)
        if blocking and tracked.busy:
            raise LogicBusyError(f"the model is still running on {point_list_node.GetName()!r}")
        self._run_pending(tracked, blocking)

    def undo(self, point_list_node):
        """Undo the last correction and its re-inference (queued drops count as one)."""
        tracked = self._idle(point_list_node)
        if tracked.pending:  # drops not given to the model yet: put the points back
            tracked.pending.clear()
            self._apply(tracked, tracked.prediction)
            return
        self._submit(tracked, tracked.session.undo, blocking=True)

    def redo(self, point_list_node):
        tracked = self._idle(point_list_node)
        self._submit(tracked, tracked.session.redo, blocking=True)

    def unfix(self, point_list_node, indices, blocking: bool = True):
        """Let the model place these points again (re-runs the model, like refine)."""
        tracked = self._idle(point_list_node)
        indices = [int(k) for k in indices]
        for k in indices:
            tracked.pending.pop(k, None)
        session = tracked.session
        self._submit(tracked, lambda: session.unfix(indices), blocking)

    def reset(self, point_list_node):
        """Forget all corrections: back to the model's first prediction."""
        tracked = self._idle(point_list_node)
        tracked.pending.clear()
        self._submit(tracked, tracked.session.reset, blocking=True)

    def set_low_confidence(self, threshold: float):
        """Change the flagging threshold and re-describe the points of idle lists."""
        self.low_confidence = float(threshold)
        for tracked in self._tracked.values():
            if not tracked.busy and tracked.prediction is not None:
                self._apply(tracked, tracked.prediction)

    # ------------------------------------------------------------------------ export

    def export(self, point_list_node, path) -> Path:
        """Write the point list as ``.mrk.json`` (Slicer markups, LPS) or ``.csv``; where the
        model names a measurement set, also ``<stem>.measurements.json`` / ``.csv`` beside it."""
        path = Path(path)
        name = path.name.lower()
        if name.endswith(".json"):
            written = self._export_json(point_list_node, path)
        elif name.endswith(".csv"):
            written = self._export_csv(point_list_node, path)
        else:
            raise ValueError(f"cannot export to {path}: use a .mrk.json or .csv file name")
        self.export_measurements(point_list_node, path.with_name(_stem(path)))
        return written

    def export_measurements(self, point_list_node, stem) -> list[Path]:
        """``<stem>.measurements.json`` and ``.csv`` of the list's current points; [] when the
        model has no measurement set."""
        from .measurements import write_measurements

        measurement_set = self.measurement_set()
        if not measurement_set:
            return []
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        return write_measurements(stem, self.measurements(point_list_node), measurement_set)

    def _export_json(self, node, path: Path) -> Path:
        storage = node.GetStorageNode()
        if storage is None or not storage.IsA("vtkMRMLMarkupsJsonStorageNode"):
            storage = self.scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
            node.SetAndObserveStorageNodeID(storage.GetID())
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.SetFileName(str(path))
        if not storage.WriteData(node):
            raise OSError(f"could not write {path}")
        return path

    def _export_csv(self, node, path: Path) -> Path:
        from .markups import write_csv

        volume = self._volume_of(node)
        names = [node.GetNthControlPointLabel(k) for k in range(node.GetNumberOfControlPoints())]
        points_xy = ras_to_pixels(control_point_positions(node), ijk_to_ras_matrix(volume))
        states, confidence = point_states(node)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(path, names, points_xy, tuple(volume.GetSpacing()[:2]), states, confidence)
        return path

    def _volume_of(self, node):
        tracked = self._tracked.get(node.GetID())
        if tracked is not None:
            return tracked.volume
        volume = reference_volume(node)
        if volume is None:
            raise ValueError(f"point list {node.GetName()!r} has no radiograph volume to convert to pixels")
        return volume

    # ------------------------------------------------------------------ measurements

    def measurement_set(self) -> str:
        """The chosen model's measurement set ("aasce-cobb", "isbi-ceph" or "" for none)."""
        return self.model_config().measurements

    def measurements(self, points, volume_node=None) -> list:
        """The model's clinical measurements (``Measurement`` records) of a point list's
        current positions, or of (K, 2) points in original pixels (``volume_node`` then
        gives spacing and image height; without it lengths stay in pixels)."""
        from .measurements import measure

        measurement_set = self.measurement_set()
        if isinstance(points, (np.ndarray, list, tuple)):
            pixels, volume = np.asarray(points, dtype=float), volume_node
        else:
            volume = volume_node or self._volume_of(points)
            pixels = ras_to_pixels(control_point_positions(points), ijk_to_ras_matrix(volume))
        spacing = height = None
        if volume is not None:
            spacing = tuple(volume.GetSpacing()[:2])
            height = volume.GetImageData().GetDimensions()[1] if volume.GetImageData() is not None else None
        return measure(pixels, measurement_set, spacing=spacing, image_height=height)

    def measurement_table(self, point_list_node):
        """The list's measurements table node (created on first use), or None when the
        model has no measurement set."""
        if not self.measurement_set():
            return None
        table = point_list_node.GetNodeReference(MEASUREMENTS_REFERENCE_ROLE)
        if table is None:
            table = self.scene.AddNewNodeByClass(
                "vtkMRMLTableNode", self.scene.GenerateUniqueName(point_list_node.GetName() + " measurements")
            )
            point_list_node.SetNodeReferenceID(MEASUREMENTS_REFERENCE_ROLE, table.GetID())
        return table

    def select_measurement(self, point_list_node, name: str):
        """Draw the lines of measurement ``name`` ("" hides them); they follow every update."""
        tracked = self._get(point_list_node)
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

    def _update_measurements(self, tracked: _Tracked):
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

    def _draw_measurement_lines(self, tracked: _Tracked, records):
        node = tracked.node
        chosen = next((m for m in records if m.name == tracked.selected_measurement), None)
        segments = chosen.lines if chosen is not None else ()
        lines = self.measurement_lines(node)
        while len(lines) > len(segments):  # fewer lines than before: drop the extra ones
            extra = lines.pop()
            node.RemoveNthNodeReferenceID(MEASUREMENT_LINE_ROLE, len(lines))
            self._remove_with_children(extra)
        while len(lines) < len(segments):
            line = self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode")
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
            line.SetName(f"{node.GetName()} {chosen.name} {i + 1}")
            line.SetAndObserveTransformNodeID(node.GetTransformNodeID())
            line.RemoveAllControlPoints()
            for end in ends:
                line.AddControlPoint(*end)
            line.EndModify(was_modifying)

    # ------------------------------------------------------------------------- batch

    def load_volume(self, path, name: str | None = None):
        """Read an image file with SimpleITK (PNG, JPEG, DICOM, NRRD, ...) into a volume node."""
        from .imaging import load_radiograph

        image = load_radiograph(path)
        return add_volume_from_radiograph(self.scene, image, name or _stem(Path(path)))

    def process_folder(self, input_dir, output_dir, progress=None, runner=None) -> list[dict]:
        """Detect the landmarks of every image in ``input_dir``; write ``<stem>.mrk.json``
        and ``<stem>.csv`` to ``output_dir``. A bad image is reported and skipped.

        ``progress(done, total, name)`` (optional) is called before each image and, while
        its model runs on a worker thread (``runner``, a ThreadedRunner; a private one if
        None), every few ms from the calling thread: the GUI processes its events there.
        Returning False cancels: the image in progress is finished, the rest are skipped.

        Returns one record per file: {"input", "outputs"}, {"input", "error"} or
        {"input", "cancelled": True}.
        """
        input_dir, output_dir = Path(input_dir), Path(output_dir)
        if not input_dir.is_dir():
            raise ValueError(f"input folder {input_dir} does not exist")
        output_dir.mkdir(parents=True, exist_ok=True)
        # chosen by name, not by content: an unreadable image is reported, not skipped
        images = [p for p in sorted(input_dir.iterdir()) if p.is_file() and _is_image_name(p.name)]
        if progress is None:
            return [self._process_file(path, output_dir) for path in images]

        own_runner = runner is None
        runner = ThreadedRunner() if own_runner else runner
        records, cancelled = [], False
        try:
            for done, path in enumerate(images):

                def pump(done=done, name=path.name):
                    nonlocal cancelled
                    cancelled = progress(done, len(images), name) is False or cancelled

                if not cancelled:
                    pump()
                if cancelled:
                    records.append({"input": str(path), "cancelled": True})
                    continue
                self._blocking_runner = waiting_runner(runner, pump)
                try:
                    records.append(self._process_file(path, output_dir))
                finally:
                    self._blocking_runner = run_inline
            progress(len(images), len(images), "")
        finally:
            if own_runner:
                runner.shutdown()
        return records

    def _process_file(self, path: Path, output_dir: Path) -> dict:
        volume = node = None
        try:
            volume = self.load_volume(path)
            # a new list, never a user's list that happens to have the same name
            node = self.detect(volume, self.new_point_list(volume.GetName() + POINT_LIST_SUFFIX), blocking=True)
            outputs = [self.export(node, output_dir / (_stem(path) + suffix)) for suffix in (".mrk.json", ".csv")]
            if self.measurement_set():
                outputs += [output_dir / (_stem(path) + suffix) for suffix in (".measurements.json", ".measurements.csv")]
            return {"input": str(path), "outputs": [str(p) for p in outputs]}
        except Exception as error:  # noqa: BLE001 - ImageError, ModelFormatError, torch...: one file fails, not the batch
            if not isinstance(error, (ValueError, OSError)):
                log.exception("%s", path.name)
            self._report(f"{path.name}: {error}")
            return {"input": str(path), "error": str(error)}
        finally:
            if node is not None:
                self.detach(node)
            for item in (node, volume):
                if item is not None:
                    self._remove_with_children(item)

    def _remove_with_children(self, node):
        display_and_storage = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        display_and_storage.append(node.GetStorageNode())
        for child in display_and_storage:
            if child is not None:
                self.scene.RemoveNode(child)
        self.scene.RemoveNode(node)

    # ----------------------------------------------------------------- drag handling

    def _observe(self, tracked: _Tracked):
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

    def _active_index(self, tracked: _Tracked) -> int | None:
        display = tracked.node.GetDisplayNode()
        index = display.GetActiveControlPoint() if display is not None else -1
        if not 0 <= index < tracked.num_keypoints:
            return None
        return index

    def _on_drag_start(self, tracked: _Tracked):
        if tracked.writing:
            return
        k = self._active_index(tracked)
        tracked.dragging = k
        tracked.preview = None
        if k is not None:
            tracked.drag_start = control_point_positions(tracked.node)[k]

    def _on_point_modified(self, tracked: _Tracked, index):
        if tracked.writing or not self.refine_while_dragging or index is None or index != tracked.dragging:
            return
        tracked.preview = (index, self._pixel_of(tracked, index))
        self._run_preview(tracked)

    def _on_drag_end(self, tracked: _Tracked):
        if tracked.writing:
            return
        k = tracked.dragging if tracked.dragging is not None else self._active_index(tracked)
        start = tracked.drag_start
        tracked.dragging, tracked.drag_start, tracked.preview = None, None, None
        if k is None:
            return
        xy = self._pixel_of(tracked, k)
        if start is not None and self._is_click(tracked, start, xy):
            # Slicer sends Start/EndInteraction on a plain click too: nothing was corrected
            self._run_pending(tracked, blocking=False)  # drops previews of this drag, if any
            return
        try:
            self._check_inside(tracked, k, xy)
        except ValueError as error:
            self._put_back(tracked, k, start)
            self._report(str(error))
            self._run_pending(tracked, blocking=False)  # drops previews of this drag, if any
            return
        tracked.pending[k] = xy
        self._mark_fixed(tracked, {k: xy})
        if self.auto_refine:
            self._run_pending(tracked, blocking=False)

    @staticmethod
    def _is_click(tracked: _Tracked, start_ras, xy) -> bool:
        start_xy = ras_to_pixels(start_ras, tracked.ijk_to_ras)[0]
        return bool(np.hypot(*(np.asarray(xy) - start_xy)) <= CLICK_TOLERANCE_PX)

    def _pixel_of(self, tracked: _Tracked, k: int) -> tuple[float, float]:
        point = [0.0, 0.0, 0.0]
        tracked.node.GetNthControlPointPosition(k, point)
        return tuple(float(v) for v in ras_to_pixels(point, tracked.ijk_to_ras)[0])

    def _check_inside(self, tracked: _Tracked, k: int, xy):
        if not inside_image(xy, tracked.size):
            from .session import OutsideImageError

            height, width = tracked.size
            name = tracked.prediction.names[k] if tracked.prediction is not None else f"#{k}"
            raise OutsideImageError(
                f"landmark {name!r} dropped at pixel ({xy[0]:.1f}, {xy[1]:.1f}), outside the "
                f"{width} x {height} image; it was put back"
            )

    def _put_back(self, tracked: _Tracked, k: int, ras):
        """Return point k to ``ras`` (its position before the drag), or to the model's."""
        if ras is None:
            if k in tracked.pending:
                ras = pixels_to_ras(tracked.pending[k], tracked.ijk_to_ras)[0]
            elif tracked.prediction is not None:
                ras = pixels_to_ras(tracked.prediction.points[k], tracked.ijk_to_ras)[0]
            else:
                return
        with self._writing(tracked):
            tracked.node.SetNthControlPointPosition(k, *ras)

    # ------------------------------------------------------------- running the model

    def _run_pending(self, tracked: _Tracked, blocking: bool):
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

        self._submit(tracked, compute, blocking, on_done=on_done, drop_fixes=fixes)

    def _run_preview(self, tracked: _Tracked):
        if tracked.busy or tracked.preview is None:
            return
        k, xy = tracked.preview
        tracked.preview = None
        if not inside_image(xy, tracked.size):
            return
        fixes = {**tracked.pending, k: xy}
        tracked.preview_steps += 1
        self._submit(tracked, lambda: tracked.session.refine(fixes), blocking=False)

    def _submit(self, tracked: _Tracked, compute, blocking: bool, on_done=None, drop_fixes=None):
        """Run ``compute`` (session only) through the runner; write its result into MRML."""
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
                "%s: model %.0f ms, %.0f ms from request to display",
                tracked.node.GetName(), 1000 * sum(model_seconds), 1000 * tracked.latency,
            )
            self._set_busy(tracked, False)
            if self._tracked.get(tracked.node.GetID()) is not tracked:
                return  # detached or re-detected meanwhile: the result is stale
            if on_done is not None:
                on_done(outcome)
            if isinstance(outcome, Exception):
                if drop_fixes:  # the model refused these drops: put the points back
                    for k in drop_fixes:
                        self._put_back(tracked, k, None)
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

    def _set_busy(self, tracked: _Tracked, busy: bool):
        tracked.busy = busy
        if self.on_busy is not None:
            self.on_busy(tracked.node, busy)

    # --------------------------------------------------------------- writing to MRML

    @contextlib.contextmanager
    def _writing(self, tracked: _Tracked):
        """Our own changes fire markups events: ignore them, and batch them into one."""
        was_writing, tracked.writing = tracked.writing, True
        was_modifying = tracked.node.StartModify()
        try:
            yield
        finally:
            tracked.node.EndModify(was_modifying)
            tracked.writing = was_writing

    def _apply(self, tracked: _Tracked, prediction):
        """Write a prediction into the point list. Points the user holds (being dragged, or
        dropped and waiting for the model) keep the user's position."""
        node = tracked.node
        held = set(tracked.pending)
        if tracked.dragging is not None:
            held.add(tracked.dragging)
        positions = pixels_to_ras(prediction.points, tracked.ijk_to_ras)
        with self._writing(tracked):
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
                fixed = bool(prediction.fixed[k]) or k in tracked.pending
                self._write_state(node, k, fixed, float(prediction.confidence[k]))
        self._update_measurements(tracked)
        if self.on_updated is not None:
            self.on_updated(node)

    def _mark_fixed(self, tracked: _Tracked, fixes: dict):
        with self._writing(tracked):
            for k in fixes:
                self._write_state(tracked.node, k, True, np.nan)
        if self.on_updated is not None:
            self.on_updated(tracked.node)

    def _write_state(self, node, k: int, fixed: bool, confidence: float):
        node.SetNthControlPointDescription(k, describe_state(fixed, confidence, self.low_confidence))
        node.SetNthControlPointSelected(k, fixed)  # selected colour = user-fixed

    # ------------------------------------------------------------------------ helpers

    def _get(self, point_list_node) -> _Tracked:
        if point_list_node is None:
            raise ValueError("no point list given")
        tracked = self._tracked.get(point_list_node.GetID())
        if tracked is None or (tracked.session is None and not tracked.busy):
            raise ValueError(
                f"point list {point_list_node.GetName()!r} is not attached: run detect() or attach() first"
            )
        return tracked

    def _idle(self, point_list_node) -> _Tracked:
        tracked = self._get(point_list_node)
        if tracked.busy:
            raise LogicBusyError(f"the model is still running on {point_list_node.GetName()!r}")
        return tracked

    def _report(self, message: str):
        log.error(message)
        if self.on_error is not None:
            self.on_error(message)


IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom",
    ".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd",
)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".mrk.json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
