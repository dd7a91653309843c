"""Volumes <-> engine radiographs: snapshots of a volume's pixels for the inference thread,
volumes made from image files or the phantom, and the point list -> volume reference."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import slicer.util

# node reference point list -> radiograph (a reference, so that it survives scene save/load)
VOLUME_REFERENCE_ROLE = "InteractiveKeypoints.Volume"
# attributes of volumes made from files by the engine (saved with the scene)
SPACING_KNOWN_ATTRIBUTE = "InteractiveKeypoints.SpacingKnown"
SPACING_SOURCE_ATTRIBUTE = "InteractiveKeypoints.SpacingSource"
# what Slicer's DICOM scalar volume plugin sets on the volumes it loads
DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"


def reference_volume(point_list_node):
    """The radiograph a point list was detected on, or None."""
    return point_list_node.GetNodeReference(VOLUME_REFERENCE_ROLE)


@dataclass
class VolumeSnapshot:
    """A copy of a one-slice volume's pixels, taken on the main thread with numpy only
    (no torch), so that the conversion to a radiograph can run on the inference thread.

    ``source`` is the DICOM file the volume was read from, if any: its window and photometric
    interpretation are applied to the pixels (Slicer shows the window only as a preset), so the
    model sees what the engine's own loading gives for the same file (CLI, browser)."""

    name: str
    pixels: np.ndarray  # (H, W) or (H, W, components)
    spacing: tuple[float, float]
    source: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)"""
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def radiograph(self):
        """The engine ``Radiograph`` (grey, float32); imports the engine (torch)."""
        from ..dicom import displayed_values
        from ..imaging import load_radiograph

        tags = file_tags(self.source) if self.source else {}
        pixels = displayed_values(self.pixels, tags) if tags and self.pixels.ndim == 2 else self.pixels
        image = load_radiograph(pixels, spacing=self.spacing)
        image.path = self.name
        return image


def source_file(volume_node) -> str | None:
    """The file a volume was read from: for a one-slice volume loaded by Slicer's DICOM module
    (its ``DICOM.instanceUIDs`` attribute) the instance's file in ``slicer.dicomDatabase``
    (inside the Slicer application), else its storage node's file; None for volumes made in
    memory."""
    uids = (volume_node.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if len(uids) == 1 and database is not None:
        path = database.fileForInstance(uids[0])
        if path:
            return str(path)
    storage = volume_node.GetStorageNode()
    return storage.GetFileName() if storage is not None and storage.GetFileName() else None


def volume_spacing(volume_node) -> tuple[tuple[float, float] | None, str]:
    """(spacing (sx, sy) in mm, or None when unknown; where it came from), for the outputs
    (``conventions.describe_spacing``).

    Volumes the engine made from a file keep what its loading found (attributes); a DICOM
    volume of Slicer's names the tag its spacing came from (Slicer's reader uses Imager Pixel
    Spacing for CR/DX, as the engine's does); PNG/JPEG/BMP/TIFF store only a print resolution."""
    spacing = (float(volume_node.GetSpacing()[0]), float(volume_node.GetSpacing()[1]))
    known_attribute = volume_node.GetAttribute(SPACING_KNOWN_ATTRIBUTE)
    if known_attribute is not None:
        known, source = known_attribute == "1", volume_node.GetAttribute(SPACING_SOURCE_ATTRIBUTE) or ""
        return (spacing if known else None), source
    path = source_file(volume_node)
    if path is not None and Path(path).suffix.lower() in PRINT_RESOLUTION_SUFFIXES:
        return None, ""
    tags = file_tags(path) if path is not None else {}
    if tags:
        from ..dicom import spacing_source

        return (spacing if spacing != (1.0, 1.0) else None), spacing_source(tags, spacing)
    return spacing, "the volume (Slicer)"


def file_tags(path) -> dict:
    """The DICOM tags of a file ({} for other files), read once per file version: the status
    line and the measurements ask after every model run, and GDCM parses the whole file."""
    try:
        stat = Path(path).stat()
    except OSError:
        return {}
    return dict(_read_tags(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _read_tags(path: str, mtime_ns: int, size: int) -> dict:
    from ..dicom import read_tags

    return read_tags(path)


# the suffixes of conventions.PRINT_RESOLUTION_IOS' formats
PRINT_RESOLUTION_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def snapshot_volume(volume_node) -> VolumeSnapshot:
    """Copy the pixels of a one-slice scalar or RGB volume; refuses other volumes."""
    name = volume_node.GetName()
    image_data = volume_node.GetImageData()
    dims = image_data.GetDimensions() if image_data is not None else None
    if dims is None or dims[2] != 1:
        from ..imaging import ImageError  # only on this error path: imports torch

        if dims is None:
            raise ImageError(f"volume {name!r} has no image data")
        raise ImageError(f"volume {name!r} has {dims[2]} slices; InteractiveKeypoints needs a single 2-D radiograph")
    pixels = np.array(slicer.util.arrayFromVolume(volume_node)[0])  # a copy, never the live buffer
    return VolumeSnapshot(name, pixels, tuple(volume_node.GetSpacing()[:2]), source_file(volume_node))


def radiograph_from_volume(volume_node):
    """The one-slice scalar or RGB volume as an engine ``Radiograph`` (grey, float32)."""
    return snapshot_volume(volume_node).radiograph()


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_ijk_to_ras(radiograph) -> np.ndarray:
    """IJK-to-RAS of a radiograph from its full geometry (origin, spacing and direction, as the
    file gave them: a DICOM's Image Position and Orientation), as Slicer's readers build it."""
    return LPS_TO_RAS @ radiograph.ijk_to_lps()


def add_volume_from_radiograph(scene, radiograph, name: str):
    """A scalar volume node holding the radiograph (float32, one slice) in the file's geometry;
    its attributes keep what the output says about the spacing (:func:`volume_spacing`)."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume_ijk_to_ras(radiograph)))
    slicer.util.updateVolumeFromArray(volume, radiograph.array[np.newaxis])  # 3-D keeps the dtype
    volume.SetAttribute(SPACING_KNOWN_ATTRIBUTE, "1" if radiograph.spacing_known else "0")
    volume.SetAttribute(SPACING_SOURCE_ATTRIBUTE, radiograph.spacing_source)
    volume.CreateDefaultDisplayNodes()
    return volume


PHANTOM_VOLUME_NAME = "SpinePhantom"


def add_phantom_volume(scene, seed: int = 0, name: str = PHANTOM_VOLUME_NAME):
    """A generated spine radiograph (68 vertebra corners) as a volume: the module's sample
    data. numpy and scipy only, so Sample Data can offer it before torch is installed."""
    from ..phantom import make_spine_phantom

    phantom = make_spine_phantom(seed)
    sx, sy = phantom.spacing
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-sx, -sy, 1.0, 1.0])))
    slicer.util.updateVolumeFromArray(volume, phantom.image.astype(np.float32)[np.newaxis])
    volume.SetAttribute(SPACING_KNOWN_ATTRIBUTE, "1")
    volume.SetAttribute(SPACING_SOURCE_ATTRIBUTE, "the generated phantom")
    volume.CreateDefaultDisplayNodes()
    return volume


def remove_with_children(scene, node):
    """Remove a node with its display and storage nodes (a table has no display node)."""
    display_and_storage = []
    if node.IsA("vtkMRMLDisplayableNode"):
        display_and_storage += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        display_and_storage.append(node.GetStorageNode())
    for child in display_and_storage:
        if child is not None:
            scene.RemoveNode(child)
    scene.RemoveNode(node)
