"""KeypointsMRMLLogic: the public API of the module's logic, and the state it holds.

The logic holds the model, the tracked point lists (:class:`~.tracked.TrackedLists`) and the
calls a user or the GUI makes: detect, attach, refine, confirm, update, undo, redo, unfix,
reset. The rest is done by collaborators it holds as attributes, each given what it needs:
``runs`` (:mod:`.running`), ``drags`` (:mod:`.dragging`), ``display``
(:mod:`.measurement_display`), ``guidance`` (:mod:`.guidance`), ``files`` and ``batch``
(:mod:`.files`), ``training`` (:mod:`.training`), ``scene_watch`` (:mod:`.scene_watch`).
Their public calls are offered on the logic under the same names (``logic.export`` is
``logic.files.export``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from ..conventions import inside_image
from ..errors import KeypointsError
from .coordinates import control_point_positions, ijk_to_ras_matrix, ras_to_pixels
from .correction_queue import CorrectionSettings, LogicBusyError
from .dragging import DragEvents
from .files import POINT_LIST_SUFFIX, Files, FolderBatch
from .guidance import ReviewGuidance
from .measurement_display import MeasurementDisplay
from .runners import Runner
from .running import ModelRuns
from .scene_watch import SceneWatch
from .states import DEFAULT_LOW_CONFIDENCE, STATE_FIXED, point_states, style_point_list
from .tracked import TrackedList, TrackedLists
from .training import TrainingLoop
from .volumes import VOLUME_REFERENCE_ROLE, reference_volume, snapshot_volume

log = logging.getLogger(__name__)

# what the panel offers as a radiograph (its volume selector names the same two classes)
RADIOGRAPH_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode")


class FixesWouldBeLostError(KeypointsError, ValueError):
    """Detect was asked to keep a list's corrections that the chosen model cannot take
    (another landmark set): ``detect(..., keep_fixes=False)`` replaces them."""


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
    ``on_updated(node)`` after each write into MRML, ``on_busy(node, busy)``,
    ``on_drag_started(node)`` when a view starts an interaction on a point (the GUI ends one
    that has no mouse button behind it: :meth:`end_interaction`).
    """

    def __init__(self, scene=None, model=None, model_folder=None, device: str = "auto"):
        self._scene = scene
        self._model = model
        self.model_folder = model_folder
        self.device = device
        self.settings = CorrectionSettings()  # auto_refine, refine_while_dragging
        self.low_confidence = DEFAULT_LOW_CONFIDENCE
        self.on_error = None
        self.on_run_failed = None
        self.on_updated = None
        self.on_busy = None
        self.on_drag_started = None
        self.lists = TrackedLists()
        self._predictor: Any = None  # one inference copy of the network, shared by all sessions
        # the model is loaded by the inference thread (detect) or a preloading thread (web)
        self._model_lock = threading.Lock()
        self._build_collaborators()

    def _build_collaborators(self):
        scene, lists = (lambda: self.scene), self.lists
        self.runs = ModelRuns(lists, self.settings, self._show, self._report, self._run_failed, self._busy_changed)
        self.drags = DragEvents(lists, self.settings, self.runs, self._mark_fixed, self._report, self._drag_started)
        self.display = MeasurementDisplay(scene, lists, self.model_config)
        self.guidance = ReviewGuidance(scene, lists)
        self.files = Files(scene, lists, self.display, self.model_config)
        self.batch = FolderBatch(scene, self.files, self._detect_on_new_list, self.detach, self.runs, self._report)
        self.training = TrainingLoop(
            lists, self.files, self.model, self.model_config, self.predictor, self._detect_blocking, self._report
        )
        self.scene_watch = SceneWatch(scene, lists, self.detach)
        self._offer_their_calls()

    def _offer_their_calls(self):
        """The collaborators' public calls, on the logic under the same names (the module, the
        web app and the console use these)."""
        self.is_dragging = self.drags.is_dragging
        self.end_interaction = self.drags.end_interaction
        self.measurement_set = self.display.measurement_set
        self.measurements = self.display.measurements
        self.measurement_table = self.display.measurement_table
        self.measurement_lines = self.display.measurement_lines
        self.select_measurement = self.display.select_measurement
        self.review_scores = self.guidance.review_scores
        self.review_order = self.guidance.review_order
        self.next_point = self.guidance.next_point
        self.suggested_point = self.guidance.suggested_point
        self.next_point_marker = self.guidance.next_point_marker
        self.jump_to_point = self.guidance.jump_to_point
        self.export = self.files.export
        self.export_measurements = self.files.export_measurements
        self.spacing_description = self.files.spacing_description
        self.load_volume = self.files.load_volume
        self.process_folder = self.batch.process_folder
        self.add_to_training_set = self.training.add_to_training_set
        self.training_stem = self.training.training_stem
        self.start_training = self.training.start_training
        self.resume_training = self.training.resume_training
        self.can_resume_training = self.training.can_resume_training
        self.cancel_training = self.training.cancel_training
        self.training_progress = self.training.training_progress
        self.training_set_models = self.training.training_set_models
        self.rank_unannotated = self.training.rank_unannotated
        self.annotate_next = self.training.annotate_next

    # ------------------------------------------------------------------ settings

    @property
    def runner(self) -> Runner:
        """How non-blocking runs are done (a ThreadedRunner in the GUI, inline by default)."""
        return self.runs.runner

    @runner.setter
    def runner(self, runner: Runner):
        self.runs.runner = runner

    @property
    def auto_refine(self) -> bool:
        """A drop runs the model at once (else drops wait for :meth:`update`)."""
        return self.settings.auto_refine

    @auto_refine.setter
    def auto_refine(self, value: bool):
        self.settings.auto_refine = bool(value)

    @property
    def refine_while_dragging(self) -> bool:
        """Each move of a dragged point runs a preview."""
        return self.settings.refine_while_dragging

    @refine_while_dragging.setter
    def refine_while_dragging(self, value: bool):
        self.settings.refine_while_dragging = bool(value)

    @property
    def training_job(self):
        """The training run started here (a TrainingJob), or None."""
        return self.training.training_job

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
                from ..model_folders import default_model_dir
                from ..model_io import load_model

                self._model = load_model(self.model_folder or default_model_dir(), device="cpu")
            return self._model

    def model_config(self):
        """The chosen model's ModelConfig, without loading its weights if not loaded yet
        (a JSON read, so the main thread can check a point list against it)."""
        with self._model_lock:
            if self._model is not None:
                return self._model.config
            from ..config import ModelConfig
            from ..model_folders import CONFIG_FILE, default_model_dir  # not model_io: no torch here

            return ModelConfig.load(Path(self.model_folder or default_model_dir()) / CONFIG_FILE)

    def predictor(self):
        """The inference copy of the model on the chosen device, shared by all sessions."""
        from ..inference import Predictor

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
        style_point_list(node)
        return node

    def detect(self, volume_node, point_list_node=None, blocking: bool = True, keep_fixes: bool = True):
        """Place all landmarks of the model on the volume; returns the point list.

        The points the user fixed in that list (on this volume) are kept and the others are
        placed around them; raises ``FixesWouldBeLostError`` when the chosen model places
        other landmarks, unless ``keep_fixes=False`` (then every point is replaced). The
        list's undo history starts again. With ``blocking=False`` the list is returned at
        once and filled when the model is done; loading the model and encoding the image
        happen off the calling thread too.
        """
        existing = point_list_node or self._existing_point_list(volume_node)
        fixes = self._kept_fixes(existing, volume_node) if keep_fixes and existing is not None else {}
        return self._start(volume_node, point_list_node, fixes, blocking)

    def _existing_point_list(self, volume_node):
        name = volume_node.GetName() + POINT_LIST_SUFFIX
        return self.scene.GetFirstNode(name, "vtkMRMLMarkupsFiducialNode", False, True)

    def _kept_fixes(self, node, volume_node) -> dict:
        """{k: (x, y)} of the list's user-fixed points that a new detection keeps."""
        states, _ = point_states(node)
        fixed = [k for k, state in enumerate(states) if state == STATE_FIXED]
        reference = reference_volume(node)
        if not fixed or (reference is not None and reference is not volume_node):
            return {}  # nothing fixed, or fixed on another image
        names = self._landmark_names()
        labels = [node.GetNthControlPointLabel(k) for k in range(node.GetNumberOfControlPoints())]
        if names is None:
            return {}
        if labels != names:
            raise FixesWouldBeLostError(
                f"{node.GetName()!r} has {len(fixed)} user-fixed points of other landmarks than the chosen "
                f"model places ({len(labels)} vs {len(names)}); a new detection would replace them"
            )
        pixels = ras_to_pixels(control_point_positions(node), ijk_to_ras_matrix(volume_node))
        dims = volume_node.GetImageData().GetDimensions() if volume_node.GetImageData() is not None else (0, 0)
        return {k: tuple(pixels[k]) for k in fixed if inside_image(pixels[k], (dims[1], dims[0]))}

    def _landmark_names(self) -> list[str] | None:
        """The chosen model's landmark names, or None when its folder cannot be read (the
        detection then fails on its own, with the reason)."""
        from ..config import ModelFormatError

        try:
            return list(self.model_config().landmark_names)
        except (ModelFormatError, OSError):
            return None

    def _start(self, volume_node, point_list_node, fixes: dict, blocking: bool):
        """New session for the point list: predict, then refine with ``fixes`` if any."""
        # snapshot on the main thread (MRML is read here only): a copy of the pixels, so
        # the computation never touches the volume's buffer; refuses multi-slice volumes.
        # Blocking calls check the image before any node changes; the GUI path leaves the
        # conversion (and the torch import it needs) to the inference thread.
        snapshot = snapshot_volume(volume_node)
        checked_image = snapshot.radiograph() if blocking else None
        node = point_list_node or self.point_list_for(volume_node)
        tracked = self._track(node, volume_node, snapshot.size)
        made = {}

        def compute():
            # loading the model and encoding the image (the session's constructor) are
            # the slow parts of a detection: they run here, off the main thread
            from ..session import KeypointSession

            image = checked_image if checked_image is not None else snapshot.radiograph()
            session = KeypointSession(self.model(), image, predictor=self.predictor())
            made["session"] = session
            prediction = session.predict()
            return session.refine(fixes) if fixes else prediction

        def on_done(outcome):  # main thread: the session becomes visible with its result
            if not isinstance(outcome, Exception):
                tracked.session = made["session"]
                # the list keeps its model's landmarks and measurements when another is chosen
                tracked.config = tracked.session.config

        self.runs.submit(tracked, compute, blocking, on_done=on_done, what="detect")
        return node

    def _track(self, node, volume_node, size: tuple[int, int]) -> TrackedList:
        """A new entry for the list on this volume (its session comes with the detection)."""
        previous = self.lists.find(node)
        if previous is not None and previous.queue.busy:
            raise LogicBusyError(f"the model is still running on {node.GetName()!r}")
        self.detach(node)
        node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        tracked = TrackedList(
            node=node, volume=volume_node, session=None, ijk_to_ras=ijk_to_ras_matrix(volume_node), size=size
        )
        self.lists.add(tracked)
        self.drags.observe(tracked)
        self.watch_scene()
        return tracked

    def _detect_blocking(self, volume_node):
        return self.detect(volume_node, blocking=True)

    def _detect_on_new_list(self, volume_node):
        # a new list, never a user's list that happens to have the same name
        return self.detect(volume_node, self.new_point_list(volume_node.GetName() + POINT_LIST_SUFFIX), blocking=True)

    def attach(self, point_list_node, volume_node=None, blocking: bool = True):
        """Listen to drags on a point list (e.g. one loaded from .mrk.json).

        The session is re-synchronised with the list: its user-fixed points are given to
        the model and the predicted points are predicted again.
        """
        node = point_list_node
        if self.is_tracked(node):
            return node
        volume_node = volume_node or reference_volume(node)
        if volume_node is None:
            raise ValueError(f"point list {node.GetName()!r} has no radiograph volume: pass volume_node to attach()")
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
        tracked = self.lists.pop(point_list_node)
        if tracked is not None:
            for tag in tracked.observer_tags:
                tracked.node.RemoveObserver(tag)

    def forget_all(self):
        for tracked in self.lists:
            self.detach(tracked.node)
        self.scene_watch.unwatch()

    def watch_scene(self):
        """Observe node removal: a point list the user deletes releases its session and takes
        the nodes it owns with it (check-next halo, measurements table and lines)."""
        self.scene_watch.watch()

    def first_radiograph(self):
        """The volume to offer first: the first one-slice scalar or RGB volume, never a label
        map (a subclass of the scalar volume) or another kind of volume."""
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode")):
            volume = self.scene.GetNthNodeByClass(i, "vtkMRMLVolumeNode")
            image = volume.GetImageData()
            if volume.GetClassName() in RADIOGRAPH_CLASSES and image is not None and image.GetDimensions()[2] == 1:
                return volume
        return None

    def is_tracked(self, point_list_node) -> bool:
        return self.lists.find(point_list_node) is not None

    def is_busy(self, point_list_node) -> bool:
        tracked = self.lists.find(point_list_node)
        return bool(tracked and tracked.queue.busy)

    def latency(self, point_list_node) -> float | None:
        tracked = self.lists.find(point_list_node)
        return tracked.latency if tracked else None

    def prediction(self, point_list_node):
        """The model's current Prediction for this list (points in original pixels)."""
        return self.lists.get(point_list_node).prediction

    def can_undo(self, point_list_node) -> bool:
        tracked = self.lists.find(point_list_node)
        if tracked is None or tracked.session is None:
            return False
        # drops not run yet, and a shown preview, are undone before the session's history
        return bool(tracked.queue.pending) or tracked.session.previewing or tracked.session.can_undo

    def can_redo(self, point_list_node) -> bool:
        tracked = self.lists.find(point_list_node)
        if tracked is None or tracked.session is None:
            return False
        return not tracked.queue.pending and not tracked.session.previewing and tracked.session.can_redo

    # -------------------------------------------------------------------- correction

    def refine(self, point_list_node, ras_by_index: dict, blocking: bool = True):
        """Move points {k: (R, A, S)}, make them user-fixed and re-run the model.

        Raises ``OutsideImageError`` (a ValueError) and changes nothing when a position is
        outside the image.
        """
        tracked = self.lists.get(point_list_node)
        fixes = {}
        for k, ras in ras_by_index.items():
            xy = tuple(ras_to_pixels(ras, tracked.ijk_to_ras)[0])
            tracked.check_inside(int(k), xy)
            fixes[int(k)] = xy
        with tracked.own_writes():
            for k, ras in ras_by_index.items():
                point_list_node.SetNthControlPointPosition(int(k), *ras[:3])
        tracked.queue.drop(fixes)
        self._mark_fixed(tracked, fixes)
        self.update(point_list_node, blocking)

    def confirm(self, point_list_node, index: int, blocking: bool = True):
        """Accept point ``index`` where it is: it becomes user-fixed and the model re-runs
        (a drop without a move; undoable). While the model runs, a non-blocking confirm is
        queued like a drop and a blocking one raises ``LogicBusyError``. A point that is
        already fixed is left alone."""
        tracked = self.lists.get(point_list_node)
        k = int(index)
        if not 0 <= k < tracked.num_keypoints:
            raise ValueError(
                f"point list {point_list_node.GetName()!r} has no landmark {index}: use 0..{tracked.num_keypoints - 1}"
            )
        if blocking and tracked.queue.busy:
            raise LogicBusyError(f"the model is still running on {point_list_node.GetName()!r}")
        if k in tracked.queue.pending or (tracked.prediction is not None and tracked.prediction.fixed[k]):
            return
        fixes = {k: tracked.pixel_of(k)}  # where the user sees it, also while a run may move it
        tracked.queue.drop(fixes)
        self._mark_fixed(tracked, fixes)
        self.update(point_list_node, blocking)

    def update(self, point_list_node, blocking: bool = False):
        """Run the model with the queued drops (the Update button when auto-refine is off)."""
        tracked = self.lists.get(point_list_node)
        if blocking and tracked.queue.busy:
            raise LogicBusyError(f"the model is still running on {point_list_node.GetName()!r}")
        if tracked.queue.dragging is None:  # a drag's drop comes at its end
            self.runs.run_next(tracked, drops=True, blocking=blocking)

    def undo(self, point_list_node):
        """Undo the last correction and its re-inference (queued drops count as one)."""
        tracked = self.lists.idle(point_list_node)
        session = tracked.attached_session
        if tracked.queue.cancel():  # drops not given to the model yet: put the points back
            session.end_preview()  # and the preview of a drag, if one is shown
            self._show(tracked, session.prediction)
            return
        self.runs.submit(tracked, session.undo, blocking=True, what="undo")

    def redo(self, point_list_node):
        tracked = self.lists.idle(point_list_node)
        self.runs.submit(tracked, tracked.attached_session.redo, blocking=True, what="redo")

    def unfix(self, point_list_node, indices, blocking: bool = True):
        """Let the model place these points again (re-runs the model, like refine)."""
        tracked = self.lists.idle(point_list_node)
        indices = [int(k) for k in indices]
        tracked.queue.withdraw(indices)
        session = tracked.attached_session
        self.runs.submit(tracked, lambda: session.unfix(indices), blocking, what="unfix")

    def reset(self, point_list_node):
        """Forget all corrections: back to the model's first prediction."""
        tracked = self.lists.idle(point_list_node)
        tracked.queue.cancel()
        self.runs.submit(tracked, tracked.attached_session.reset, blocking=True, what="reset")

    def set_low_confidence(self, threshold: float):
        """Change the flagging threshold and re-describe the points of idle lists."""
        self.low_confidence = float(threshold)
        for tracked in self.lists:
            if not tracked.queue.busy and tracked.prediction is not None:
                self._show(tracked, tracked.prediction)

    # --------------------------------------------------------------- writing to MRML

    def _show(self, tracked: TrackedList, prediction):
        """Write a prediction into the point list, then its measurements; tell the GUI."""
        tracked.write_prediction(prediction, self.low_confidence)
        self.display.update(tracked)
        self.guidance.update_marker(tracked)
        self._report_unpropagated(tracked, prediction)
        if self.on_updated is not None:
            self.on_updated(tracked.node)

    def _report_unpropagated(self, tracked: TrackedList, prediction):
        """Say once which newly fixed points were too far from the model's estimate to move the others."""
        unpropagated = frozenset(int(k) for k in np.flatnonzero(prediction.unpropagated))
        new, tracked.unpropagated = sorted(unpropagated - tracked.unpropagated), unpropagated
        if new:
            names = ", ".join(prediction.names[k] for k in new)
            self._report(
                f"{names}: kept where you put it, but it moved no other point: it lies farther from the "
                "model's estimate than the model's propagation limit (a slip? undo takes it back)"
            )

    def _mark_fixed(self, tracked: TrackedList, fixes: dict):
        tracked.write_fixed(fixes, self.low_confidence)
        self.guidance.update_marker(tracked)
        if self.on_updated is not None:
            self.on_updated(tracked.node)

    # ------------------------------------------------------------------ callbacks

    def _report(self, message: str):
        log.error(message)
        if self.on_error is not None:
            self.on_error(message)

    def _run_failed(self, message: str):
        if self.on_run_failed is not None:
            self.on_run_failed(message)

    def _busy_changed(self, node, busy: bool):
        if self.on_busy is not None:
            self.on_busy(node, busy)

    def _drag_started(self, node):
        if self.on_drag_started is not None:
            self.on_drag_started(node)
