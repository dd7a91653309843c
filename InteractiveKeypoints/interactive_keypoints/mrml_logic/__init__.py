"""GUI-free MRML logic of the InteractiveKeypoints Slicer module.

Needs MRML (Slicer, or ``slicer-core`` from PyPI) but neither Qt nor the Slicer application,
so the same code runs in the module, in the Python console, in batch jobs and in tests.

One :class:`KeypointSession` per point list. A user drag (``PointEndInteractionEvent``)
makes the dragged point user-fixed and re-runs the model; only points that are not fixed
move. A press and release without a move is not a correction. The list's point count is
locked (one point per landmark), and a list removed from the scene releases its session.
Inference is split so that it can run off the main thread (:mod:`.runners`):

* ``compute`` -- a closure over the session only (no MRML), run by ``runner``; for a
  detection it also loads the model and builds the session (image encoder), from a
  snapshot of the volume taken on the main thread;
* ``finish``  -- called on the main thread with the result, writes it into MRML.

Every call that runs the model (detect, attach, refine, update, unfix) takes ``blocking``:
True runs inline and raises errors (console, batch), False goes through ``runner`` like a
drag and reports errors through ``on_error`` (GUI, web). undo, redo and reset only move
in the session's history, so they never run the model and are always synchronous.

Where things are (everything public is importable from this package):

* :mod:`.logic` -- :class:`KeypointsMRMLLogic`, the public API, the model and the tracked
  lists; the rest is done by the collaborators it holds (each given what it needs):
* :mod:`.correction_queue` -- one list's drops, drag and preview on their way to the model,
  and what runs next (pure Python: no MRML, no model);
* :mod:`.runners` -- the :class:`Runner` protocol and the inline / threaded runners;
* :mod:`.running` -- ``runs``: submitting model runs, writing their outcome, running what
  the queue has next;
* :mod:`.dragging` -- ``drags``: markups interaction events -> the queue;
* :mod:`.tracked` -- one point list under control, the writes into it, the lists by node;
* :mod:`.states` -- point states in the list (descriptions, selected colour);
* :mod:`.coordinates` -- pixels <-> RAS; :mod:`.volumes` -- volumes <-> radiographs;
* :mod:`.measurement_display` -- ``display``: the measurements table and lines;
* :mod:`.guidance` -- ``guidance``: which point to check next (the engine's ranking), its halo;
* :mod:`.files` -- ``files``: export, image loading; ``batch``: detection of a folder;
* :mod:`.training` -- ``training``: your own landmarks: add to a training set, train, annotate next;
* :mod:`.scene_watch` -- ``scene_watch``: a list the user deletes takes its nodes with it.

Engine modules that need torch are imported lazily: importing this package needs only
numpy, vtk and slicer.
"""

from ..conventions import IMAGE_SUFFIXES, inside_image
from .coordinates import control_point_positions, ijk_to_ras_matrix, pixels_to_ras, ras_to_pixels
from .correction_queue import CorrectionQueue, CorrectionSettings, LogicBusyError
from .dragging import CLICK_TOLERANCE_PX
from .files import POINT_LIST_SUFFIX
from .guidance import NEXT_POINT_COLOR, NEXT_POINT_ROLE
from .logic import RADIOGRAPH_CLASSES, FixesWouldBeLostError, KeypointsMRMLLogic
from .measurement_display import (
    MEASUREMENT_COLUMNS,
    MEASUREMENT_LINE_COLOR,
    MEASUREMENT_LINE_ROLE,
    MEASUREMENTS_REFERENCE_ROLE,
)
from .runners import Runner, ThreadedRunner, outcome_of, run_inline, waiting_runner
from .states import (
    DEFAULT_LOW_CONFIDENCE,
    FIXED_COLOR,
    LOW_CONFIDENCE_TAG,
    PREDICTED_COLOR,
    STATE_FIXED,
    STATE_PREDICTED,
    describe_state,
    is_low_confidence,
    point_states,
)
from .tracked import TrackedList
from .training import TRAINING_IMAGE_ATTRIBUTE, TrainingSetMismatchError, raw_states
from .volumes import (
    PHANTOM_VOLUME_NAME,
    VOLUME_REFERENCE_ROLE,
    VolumeSnapshot,
    add_phantom_volume,
    add_volume_from_radiograph,
    radiograph_from_volume,
    reference_volume,
    snapshot_volume,
    source_file,
    volume_ijk_to_ras,
    volume_spacing,
)

__all__ = [
    "CLICK_TOLERANCE_PX",
    "CorrectionQueue",
    "CorrectionSettings",
    "DEFAULT_LOW_CONFIDENCE",
    "FIXED_COLOR",
    "IMAGE_SUFFIXES",
    "LOW_CONFIDENCE_TAG",
    "MEASUREMENTS_REFERENCE_ROLE",
    "MEASUREMENT_COLUMNS",
    "MEASUREMENT_LINE_COLOR",
    "MEASUREMENT_LINE_ROLE",
    "NEXT_POINT_COLOR",
    "NEXT_POINT_ROLE",
    "PHANTOM_VOLUME_NAME",
    "POINT_LIST_SUFFIX",
    "PREDICTED_COLOR",
    "RADIOGRAPH_CLASSES",
    "STATE_FIXED",
    "STATE_PREDICTED",
    "TRAINING_IMAGE_ATTRIBUTE",
    "VOLUME_REFERENCE_ROLE",
    "FixesWouldBeLostError",
    "KeypointsMRMLLogic",
    "LogicBusyError",
    "Runner",
    "ThreadedRunner",
    "TrackedList",
    "TrainingSetMismatchError",
    "VolumeSnapshot",
    "add_phantom_volume",
    "add_volume_from_radiograph",
    "control_point_positions",
    "describe_state",
    "ijk_to_ras_matrix",
    "inside_image",
    "is_low_confidence",
    "outcome_of",
    "pixels_to_ras",
    "point_states",
    "radiograph_from_volume",
    "ras_to_pixels",
    "raw_states",
    "reference_volume",
    "run_inline",
    "snapshot_volume",
    "source_file",
    "volume_ijk_to_ras",
    "volume_spacing",
    "waiting_runner",
]
