"""One radiograph as a clinic has it, written three ways by the tests (nothing is committed):

* ``<name>.png``  -- the 8-bit view a viewer exports (no spacing, no position);
* ``<name>-m2.dcm`` -- a 12-bit CR, MONOCHROME2, with a VOI window that shows exactly the PNG,
  Imager Pixel Spacing (0018,1164) only, and the Image Position/Orientation of an AP film
  (rows to the patient's left, columns to the feet: a coronal plane, not axial);
* ``<name>-m1.dcm`` -- the same film stored MONOCHROME1 (minimum = white), window to match.

Outside the window (a collimator border) the stored values are far from the rest, so a reader
that ignores the window sees another image than the PNG. ``load_like_slicers_dicom_plugin``
does what Slicer's DICOMScalarVolumePlugin does with such a file (v5.10.0,
``Modules/Scripted/DICOMPlugins/DICOMScalarVolumePlugin.py``, ``loadFilesWithSeriesReader``
with GDCM and the parts of ``setVolumeNodeProperties`` that touch the volume), with the same
vtkITK reader from slicer-core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SPACING = (0.15, 0.2)  # (sx, sy): column and row spacing, mm
POSITION = (-120.0, 0.0, 300.0)  # LPS of the first pixel
ORIENTATION = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # rows -> patient left, columns -> feet
BITS = 12
LOW, STEP = 100, 8  # stored = LOW + STEP * grey (M2)
WIDTH = STEP * 255 + 1  # LINEAR: y = (x - (c - 0.5)) / (w - 1) + 0.5
BORDER = 4000  # collimator edge, clipped by the window
BORDER_PX = 6


def grey_image(height: int = 256, width: int = 128, seed: int = 3) -> np.ndarray:
    """The film as a viewer shows it, 8-bit grey: a spine phantom, its collimator border white."""
    from interactive_keypoints.phantom import make_spine_phantom

    image = make_spine_phantom(seed=seed, height=height, width=width).image
    grey = np.round(255 * (image - image.min()) / (image.max() - image.min())).astype(np.uint8)
    grey[:BORDER_PX, :] = grey[-BORDER_PX:, :] = 255
    return grey


def write_png(path: Path, grey: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(grey).save(path)
    return path


def stored_values(grey: np.ndarray) -> np.ndarray:
    """MONOCHROME2 12-bit values whose window shows ``grey`` exactly; the border beyond the window."""
    stored = (LOW + STEP * grey.astype(np.int32)).astype(np.uint16)
    stored[:BORDER_PX, :] = stored[-BORDER_PX:, :] = BORDER
    return stored


def write_dicom(path: Path, grey: np.ndarray, photometric: str = "MONOCHROME2", **extra) -> Path:
    """A CR file of the film; ``extra`` sets or overrides attributes (e.g. PixelSpacing)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = stored_values(grey)
    center = LOW + (WIDTH - 1) / 2 + 0.5  # grey 0 -> 0.0, grey 255 -> 1.0
    if photometric == "MONOCHROME1":  # same film: stored inverted, window around the inverted values
        stored = (2**BITS - 1 - stored.astype(np.int32)).astype(np.uint16)
        center = (2**BITS - 1) - center + 1.0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID, ds.BodyPartExamined = "CR", "Phantom^Spine", "IK26", "SPINE"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS, BITS - 1, 0
    ds.ImagerPixelSpacing = [SPACING[1], SPACING[0]]  # DICOM: row spacing \ column spacing
    ds.ImagePositionPatient = list(POSITION)
    ds.ImageOrientationPatient = list(ORIENTATION)
    ds.WindowCenter, ds.WindowWidth = center, WIDTH
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    for key, value in extra.items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_radiograph_files(folder: Path, grey: np.ndarray, name: str = "film") -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "png": write_png(folder / f"{name}.png", grey),
        "m2": write_dicom(folder / f"{name}-m2.dcm", grey, "MONOCHROME2"),
        "m1": write_dicom(folder / f"{name}-m1.dcm", grey, "MONOCHROME1"),
    }


def load_like_slicers_dicom_plugin(scene, path: Path, name: str):
    """Load a one-file series the way DICOMScalarVolumePlugin.loadFilesWithSeriesReader("GDCM")
    does, then what setVolumeNodeProperties sets on the volume (instance UIDs, window presets)."""
    import pydicom
    import slicer
    import vtk

    reader = slicer.vtkITKArchetypeImageSeriesScalarReader()
    reader.SetArchetype(str(path))
    reader.AddFileName(str(path))
    reader.SetSingleFile(0)
    reader.SetOutputScalarTypeToNative()
    reader.SetDesiredCoordinateOrientationToNative()
    reader.SetUseNativeOriginOn()
    reader.SetDICOMImageIOApproachToGDCM()
    reader.Update()
    assert reader.GetErrorCode() == vtk.vtkErrorCode.NoError
    change = vtk.vtkImageChangeInformation()
    change.SetInputConnection(reader.GetOutputPort())
    change.SetOutputSpacing(1, 1, 1)
    change.SetOutputOrigin(0, 0, 0)
    change.Update()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    volume.SetAndObserveImageData(change.GetOutputDataObject(0))
    volume.SetRASToIJKMatrix(reader.GetRasToIjkMatrix())
    volume.CreateDefaultDisplayNodes()
    header = pydicom.dcmread(path, stop_before_pixels=True)
    volume.SetAttribute("DICOM.instanceUIDs", str(header.SOPInstanceUID))
    display = volume.GetScalarVolumeDisplayNode()
    display.AddWindowLevelPreset(float(header.WindowWidth), float(header.WindowCenter))
    display.SetWindowLevelFromPreset(0)
    volume.keep_alive = change  # the volume's image data comes from this pipeline
    return volume


class DicomDatabase:
    """``slicer.dicomDatabase`` for files of these tests: ctkDICOMDatabase.fileForInstance(uid)
    (what Slicer's DICOMUtils.py calls), and nothing else."""

    def __init__(self, *paths: Path):
        import pydicom

        self._files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): str(p) for p in paths}

    def fileForInstance(self, uid: str) -> str:  # noqa: N802 - ctkDICOMDatabase's name
        return self._files.get(uid, "")
