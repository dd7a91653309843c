"""Volumes <-> engine radiographs: snapshots of a volume's pixels for the inference thread,
volumes made from image files or the phantom, and the point list -> volume reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import slicer.util

# node reference point list -> radiograph (a reference, so that it survives scene save/load)
VOLUME_REFERENCE_ROLE = "InteractiveKeypoints.Volume"


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
        from ..imaging import load_radiograph

        image = load_radiograph(self.pixels, spacing=self.spacing)
        image.path = self.name
        return image


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
    from ..phantom import make_spine_phantom

    phantom = make_spine_phantom(seed)
    sx, sy = phantom.spacing
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([-sx, -sy, 1.0, 1.0])))
    slicer.util.updateVolumeFromArray(volume, phantom.image.astype(np.float32)[np.newaxis])
    volume.CreateDefaultDisplayNodes()
    return volume


def remove_with_children(scene, node):
    """Remove a node with its display and storage nodes."""
    display_and_storage = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    display_and_storage.append(node.GetStorageNode())
    for child in display_and_storage:
        if child is not None:
            scene.RemoveNode(child)
    scene.RemoveNode(node)
