"""Your own landmarks: the loop of the module (and the browser) around a training set.

* :meth:`TrainingLoop.add_to_training_set` saves a radiograph and its point list into the set
  (:mod:`interactive_keypoints.training_set`): the first list's names become the template;
  only the points the user placed, moved or confirmed are labels;
* :meth:`TrainingLoop.start_training` / ``resume_training`` / ``cancel_training`` run the
  training in a process of its own (:mod:`interactive_keypoints.training_job`), and
  :meth:`TrainingLoop.training_progress` says how far it is;
* :meth:`TrainingLoop.annotate_next` ranks the set's unannotated images by how unsure the
  chosen model is of them (the mean "check next" score of its prediction) and pre-annotates
  the first: the user corrects a few points instead of placing all.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from ..errors import KeypointsError
from ..markups import parse_description
from .coordinates import control_point_positions, ijk_to_ras_matrix, ras_to_pixels
from .correction_queue import LogicBusyError
from .files import Files
from .runners import ThreadedRunner, run_inline, waiting_runner
from .tracked import TrackedLists
from .volumes import snapshot_volume, source_file

# a volume loaded from a training set's own image: "<set folder>|<stem>" (saved with the scene)
TRAINING_IMAGE_ATTRIBUTE = "InteractiveKeypoints.TrainingImage"


class TrainingSetMismatchError(KeypointsError, ValueError):
    """The chosen model places other landmarks than the training set has."""


def raw_states(node) -> list[str]:
    """Each point's state as its description says it: "" for a point placed by hand (a label),
    "predicted" for one the model placed and nobody reviewed (point_states says "predicted"
    for both)."""
    return [parse_description(node.GetNthControlPointDescription(k))[0] for k in range(node.GetNumberOfControlPoints())]


def list_pixels(node, volume) -> np.ndarray:
    """(K, 2) pixel positions of the list's points on ``volume``; NaN for a point without a
    position (skipped as missing, or still being placed): it is no label."""
    points = ras_to_pixels(control_point_positions(node), ijk_to_ras_matrix(volume))
    for k in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(k) != slicer.vtkMRMLMarkupsNode.PositionDefined:
            points[k] = np.nan
    return points


class TrainingLoop:
    """Add to a training set, train, annotate next.

    ``model()``, ``model_config()`` and ``predictor()`` are the logic's chosen model;
    ``detect(volume)`` detects on the volume's list (blocking) and returns it; ``report``
    tells the user of an image that could not be ranked.
    """

    def __init__(
        self,
        lists: TrackedLists,
        files: Files,
        model: Callable[[], Any],
        model_config: Callable[[], Any],
        predictor: Callable[[], Any],
        detect: Callable[[Any], Any],
        report: Callable[[str], None],
    ):
        self.lists = lists
        self.files = files
        self.model = model
        self.model_config = model_config
        self.predictor = predictor
        self.detect = detect
        self.report = report
        self.training_job: Any = None  # the run started here (a TrainingJob), while the logic lives

    # ------------------------------------------------------------------ adding

    def add_to_training_set(
        self, point_list_node, folder, volume_node=None, replace: bool = False, template_file=None
    ) -> Path:
        """Save the list's radiograph (its detection's, else ``volume_node``: a list placed by
        hand) and points into the training set ``folder``; returns the point list's file. A folder that is no set yet becomes one: its template is
        ``template_file`` (JSON) or this list's names (pairs found by left/right in the names).
        Refused with nothing written: points of other landmarks, an image already in the set
        (``replace=True`` replaces its points), a set of another version, a list the model is
        still running on."""
        from ..training_set import add_image, template_from_file

        tracked = self.lists.find(point_list_node)
        if tracked is not None and tracked.queue.busy:
            raise LogicBusyError(f"the model is still running on {point_list_node.GetName()!r}")
        volume = volume_node if volume_node is not None and tracked is None else None
        volume = volume or self.lists.volume_of(point_list_node)
        snapshot = snapshot_volume(volume)
        radiograph = snapshot.radiograph()  # grey, DICOM window applied: what the model sees
        names = [point_list_node.GetNthControlPointLabel(k) for k in range(point_list_node.GetNumberOfControlPoints())]
        points = list_pixels(point_list_node, volume)
        states = raw_states(point_list_node)
        template = template_from_file(template_file) if template_file else None
        return add_image(
            folder,
            radiograph.array,
            radiograph.spacing,
            points,
            names,
            states,
            volume.GetName(),
            stem=self.training_stem(volume, folder),
            replace=replace,
            template=template,
        )

    @staticmethod
    def training_stem(volume, folder) -> str | None:
        """The stem of the set's own image this volume shows (annotated where it lies), or None."""
        folder = Path(folder).resolve()
        marked = (volume.GetAttribute(TRAINING_IMAGE_ATTRIBUTE) or "").rpartition("|")
        if marked[1] and Path(marked[0]).resolve() == folder:
            return marked[2]
        path = source_file(volume)
        if path and Path(path).resolve().parent == folder:
            from ..conventions import file_stem

            return file_stem(path)
        return None

    # ------------------------------------------------------------------ training

    def start_training(self, folder, minutes: float, continue_training: bool = False, **options):
        """Train a new model of the set in a process of its own (:func:`training_job.start`):
        by transfer from the nearest shipped model, or from the set's latest model
        (``continue_training``). ``options``: ``start_from``, ``threads``, ``python``, ``extra``."""
        from .. import training_job

        self._refuse_second_run()
        self.training_job = training_job.start(folder, minutes, continue_training=continue_training, **options)
        return self.training_job

    def resume_training(self, folder, python=None):
        """Continue the set's unfinished run (cancelled, or killed with Slicer) from its checkpoint."""
        from .. import training_job

        self._refuse_second_run()
        self.training_job = training_job.resume(folder, python=python)
        return self.training_job

    def can_resume_training(self, folder) -> bool:
        from ..training_job import unfinished_run

        return folder is not None and Path(folder).is_dir() and unfinished_run(folder) is not None

    def _refuse_second_run(self):
        if self.training_job is not None and self.training_job.running:
            from ..training_job import TrainingJobError

            raise TrainingJobError(f"a training run is going on ({self.training_job.out.name}): cancel it first")

    def training_progress(self) -> dict | None:
        """The run's progress (:meth:`TrainingJob.progress`), None when none was started here."""
        return self.training_job.progress() if self.training_job is not None else None

    def cancel_training(self):
        if self.training_job is not None:
            self.training_job.cancel()

    @staticmethod
    def training_set_models(folder) -> list[Path]:
        """The set's trained model folders, oldest first (the module lists them with the shipped ones)."""
        from ..training_set import trained_models

        return trained_models(folder) if folder and Path(folder).is_dir() else []

    # ------------------------------------------------------------------ annotate next

    def rank_unannotated(self, folder, progress=None, runner=None) -> list[tuple[Path, float]]:
        """The set's unannotated images with the chosen model's uncertainty (the mean "check next"
        score of its prediction, review.py), most uncertain first. ``progress(done, total, name)``
        and ``runner`` as in :meth:`process_folder` (False from progress stops early)."""
        from ..training_set import read_template, unannotated_images

        template = read_template(folder)
        if template is None:
            raise ValueError(f"{folder} is no training set yet: add a first annotated image to it")
        if list(self.model_config().landmark_names) != list(template.names):
            raise TrainingSetMismatchError(
                "the chosen model places other landmarks than the training set: choose one of the set's models "
                "(train one first)"
            )
        images = unannotated_images(folder)
        own_runner = progress is not None and runner is None
        runner = ThreadedRunner() if own_runner else runner
        ranked = []
        try:
            for done, path in enumerate(images):
                if progress is not None and progress(done, len(images), path.name) is False:
                    break
                pump = functools.partial(progress, done, len(images), path.name) if progress is not None else None
                run = run_inline if runner is None else waiting_runner(runner, pump)
                outcome: list = []
                run(self._uncertainty_of(path), outcome.append)
                if isinstance(outcome[0], Exception):
                    self.report(f"{path.name}: {outcome[0]}")
                    continue
                ranked.append((path, outcome[0]))
        finally:
            if own_runner:
                runner.shutdown()
        return sorted(ranked, key=lambda item: -item[1])

    def _uncertainty_of(self, path: Path):
        def compute():  # off the main thread: no MRML here
            from ..imaging import load_radiograph
            from ..session import KeypointSession

            session = KeypointSession(self.model(), load_radiograph(path), predictor=self.predictor())
            scores = np.asarray(session.predict().review_score, dtype=float)
            return float(np.mean(scores[np.isfinite(scores)])) if np.isfinite(scores).any() else 0.0

        return compute

    def annotate_next(self, folder, progress=None, runner=None):
        """Open the set's most uncertain unannotated image with the chosen model's points on it:
        (volume, point list), or None when every image is annotated. Correct them, then add."""
        ranked = self.rank_unannotated(folder, progress, runner)
        if not ranked:
            return None
        path = ranked[0][0]
        volume = self.files.load_volume(path)
        from ..conventions import file_stem

        volume.SetAttribute(TRAINING_IMAGE_ATTRIBUTE, f"{Path(folder).resolve()}|{file_stem(path)}")
        return volume, self.detect(volume)
