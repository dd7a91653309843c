"""Files: export of a point list (``.mrk.json``, ``.csv``, measurements beside them),
loading image files as volumes, and the batch detection of a folder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..conventions import MEASUREMENTS_CSV, MEASUREMENTS_JSON, POINTS_CSV, POINTS_JSON, file_stem, is_image_name
from .coordinates import control_point_positions, ijk_to_ras_matrix, ras_to_pixels
from .measurement_display import MeasurementDisplay
from .runners import ThreadedRunner, waiting_runner
from .running import ModelRuns
from .states import point_states
from .tracked import TrackedLists
from .volumes import add_volume_from_radiograph, remove_with_children, volume_spacing

log = logging.getLogger(__name__)

POINT_LIST_SUFFIX = " keypoints"


class Files:
    """Export of point lists and loading of image files (``scene()``: the logic's;
    ``model_config()``: the chosen model's)."""

    def __init__(
        self,
        scene: Callable[[], Any],
        lists: TrackedLists,
        measurements: MeasurementDisplay,
        model_config: Callable[[], Any],
    ):
        self.scene = scene
        self.lists = lists
        self.measurements = measurements
        self.model_config = model_config

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
        self.export_measurements(point_list_node, path.with_name(file_stem(path)))
        return written

    def export_measurements(self, point_list_node, stem) -> list[Path]:
        """``<stem>.measurements.json`` and ``.csv`` of the list's current points; [] when the
        model has no measurement set."""
        from ..measurements import write_measurements

        measurement_set = self.measurements.measurement_set(point_list_node)
        if not measurement_set:
            return []
        if self.lists.find(point_list_node) is None and (
            point_list_node.GetNumberOfControlPoints() != self.model_config().num_keypoints
        ):
            return []  # a list of another model's landmarks: the chosen model's set does not apply
        Path(stem).parent.mkdir(parents=True, exist_ok=True)
        return write_measurements(stem, self.measurements.measurements(point_list_node), measurement_set)

    def _export_json(self, node, path: Path) -> Path:
        storage = node.GetStorageNode()
        if storage is None or not storage.IsA("vtkMRMLMarkupsJsonStorageNode"):
            storage = self.scene().AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
            node.SetAndObserveStorageNodeID(storage.GetID())
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.SetFileName(str(path))
        if not storage.WriteData(node):
            raise OSError(f"could not write {path}")
        return path

    def _export_csv(self, node, path: Path) -> Path:
        from ..markups import write_csv

        volume = self.lists.volume_of(node)
        names = [node.GetNthControlPointLabel(k) for k in range(node.GetNumberOfControlPoints())]
        points_xy = ras_to_pixels(control_point_positions(node), ijk_to_ras_matrix(volume))
        states, confidence = point_states(node)
        spacing, source = volume_spacing(volume)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(path, names, points_xy, spacing, states, confidence, spacing_source=source)
        return path

    def spacing_description(self, point_list_node) -> str:
        """The spacing the list's millimetres use and where it came from (the CSV says the same)."""
        from ..conventions import describe_spacing

        volume = self.lists.volume_of(point_list_node)
        spacing, source = volume_spacing(volume)
        return describe_spacing(volume.GetSpacing()[:2], spacing is not None, source)

    def load_volume(self, path, name: str | None = None):
        """Read an image file with SimpleITK (PNG, JPEG, DICOM, NRRD, ...) into a volume node."""
        from ..imaging import load_radiograph

        image = load_radiograph(path)
        return add_volume_from_radiograph(self.scene(), image, name or file_stem(Path(path)))


class FolderBatch:
    """The batch detection of a folder of images, one new point list at a time.

    ``detect_new(volume)`` detects on a new list of the volume (blocking) and returns it;
    ``release(node)`` forgets a list's session; ``runs`` gives the blocking runner a batch
    waits on; ``report`` tells the user of a file that failed.
    """

    def __init__(
        self,
        scene: Callable[[], Any],
        files: Files,
        detect_new: Callable[[Any], Any],
        release: Callable[[Any], None],
        runs: ModelRuns,
        report: Callable[[str], None],
    ):
        self.scene = scene
        self.files = files
        self.detect_new = detect_new
        self.release = release
        self.runs = runs
        self.report = report

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
        images = [p for p in sorted(input_dir.iterdir()) if p.is_file() and is_image_name(p.name)]
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
                with self.runs.blocking_through(waiting_runner(runner, pump)):
                    records.append(self._process_file(path, output_dir))
            progress(len(images), len(images), "")
        finally:
            if own_runner:
                runner.shutdown()
        return records

    def _process_file(self, path: Path, output_dir: Path) -> dict:
        volume = node = None
        try:
            volume = self.files.load_volume(path)
            node = self.detect_new(volume)
            outputs = [
                self.files.export(node, output_dir / (file_stem(path) + suffix)) for suffix in (POINTS_JSON, POINTS_CSV)
            ]
            if self.files.measurements.measurement_set(node):
                outputs += [output_dir / (file_stem(path) + suffix) for suffix in (MEASUREMENTS_JSON, MEASUREMENTS_CSV)]
            return {"input": str(path), "outputs": [str(p) for p in outputs]}
        except Exception as error:  # noqa: BLE001 - ImageError, ModelFormatError, torch...: one file fails, not the batch
            if not isinstance(error, (ValueError, OSError)):
                log.exception("%s", path.name)
            self.report(f"{path.name}: {error}")
            return {"input": str(path), "error": str(error)}
        finally:
            if node is not None:
                self.release(node)
            for item in (node, volume):
                if item is not None:
                    remove_with_children(self.scene(), item)
