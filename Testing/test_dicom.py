"""DICOM radiographs as a clinic has them (CR, MONOCHROME1/2, 12 bits, VOI window, Imager Pixel
Spacing, Image Position/Orientation), generated with pydicom and read with the engine (SimpleITK).

The same film stored as PNG, MONOCHROME2 and MONOCHROME1 DICOM must give the model the same
image and the outputs the same landmarks in millimetres; the Slicer module's side of this is in
test_mrml_logic.py (``test_dicom_*``).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="pydicom writes the test's DICOM files (dev extra)")
sitk = pytest.importorskip("SimpleITK")

from radiographs import (  # noqa: E402
    CR_SOP_CLASS,
    ORIENTATION,
    POSITION,
    SPACING,
    grey_image,
    write_dicom,
    write_radiograph_files,
)

from interactive_keypoints import dicom  # noqa: E402
from interactive_keypoints.conventions import SPINE  # noqa: E402
from interactive_keypoints.imaging import load_radiograph  # noqa: E402


@pytest.fixture(scope="module")
def grey():
    return grey_image()


@pytest.fixture
def films(tmp_path, grey):
    return write_radiograph_files(tmp_path / "films", grey)


def read_itk(path):
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    image = reader.Execute()
    return sitk.GetArrayFromImage(image).reshape(image.GetSize()[1], image.GetSize()[0]), dicom.tags_of(reader)


def write_small(path, stored, photometric, bits, signed=False, slope=1.0, intercept=0.0):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CR_SOP_CLASS, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, CR_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", *stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = stored.dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    "stored, bits, signed, slope, intercept",
    [
        (np.array([[0, 100, 1000, 4095]], np.uint16), 12, False, 1.0, 0.0),
        (np.array([[0, 100, 1000, 4095]], np.uint16), 12, False, 2.0, -50.0),
        (np.array([[-3000, -1, 0, 2000]], np.int16), 16, True, 1.0, 0.0),
        (np.array([[0, 5, 200, 255]], np.uint8), 8, False, 1.0, 0.0),
    ],
)
def test_itk_turns_monochrome1_into_k_minus_the_modality_value(tmp_path, stored, bits, signed, slope, intercept):
    """ITK (as in Slicer) inverts MONOCHROME1 and keeps the tag: the reflection constant the
    window needs is the one GDCM's inversion and the rescale produce."""
    values, tags = read_itk(write_small(tmp_path / "m1.dcm", stored, "MONOCHROME1", bits, signed, slope, intercept))
    assert dicom.is_monochrome1(tags)
    modality = slope * stored.astype(float) + intercept
    np.testing.assert_allclose(dicom.monochrome1_reflection(tags) - values, modality)


def test_voi_functions_follow_the_standard():
    x = np.array([0.0, 99.5, 100.0, 100.5, 200.0])
    linear = dicom._apply_voi(x, 100.0, 101.0, "LINEAR")  # (x - 99.5) / 100 + 0.5
    np.testing.assert_allclose(linear, [0.0, 0.5, 0.505, 0.51, 1.0])
    np.testing.assert_allclose(dicom._apply_voi(x, 100.0, 100.0, "LINEAR_EXACT"), [0.0, 0.495, 0.5, 0.505, 1.0])
    sigmoid = dicom._apply_voi(x, 100.0, 100.0, "SIGMOID")
    assert sigmoid[2] == pytest.approx(0.5) and np.all(np.diff(sigmoid) > 0)


def test_png_monochrome2_and_monochrome1_give_the_model_the_same_image(films, grey):
    png, m2, m1 = (load_radiograph(films[k]) for k in ("png", "m2", "m1"))
    np.testing.assert_array_equal(png.array, grey.astype(np.float32))
    # to the last bit (rounded once, from float64): the model cannot tell the three apart
    np.testing.assert_array_equal(m2.array, png.array / np.float32(255))
    np.testing.assert_array_equal(m1.array, m2.array)
    assert "VOI window" in m2.presentation and "MONOCHROME1" in m1.presentation and png.presentation == ""
    # without the window the 12-bit values (border far above the film) are another picture
    raw = read_itk(films["m2"])[0].astype(float)
    scaled = (raw - raw.min()) / np.ptp(raw)
    assert np.abs(scaled - grey / 255.0).max() > 0.4


def test_dicom_spacing_and_geometry_come_from_the_imager_spacing_and_patient_position(films):
    m2 = load_radiograph(films["m2"])
    assert m2.spacing == pytest.approx(SPACING) and m2.spacing_known
    assert m2.spacing_description() == (
        "0.15 x 0.2 mm per pixel from Imager Pixel Spacing (0018,1164), at the detector"
    )
    row, column = np.array(ORIENTATION[:3]), np.array(ORIENTATION[3:])
    x, y = 17.0, 40.0
    expected = np.array(POSITION) + x * SPACING[0] * row + y * SPACING[1] * column
    np.testing.assert_allclose((m2.ijk_to_lps() @ [x, y, 0.0, 1.0])[:3], expected, atol=1e-9)
    png = load_radiograph(films["png"])
    assert not png.spacing_known and png.spacing_description().startswith("unknown")
    assert (
        load_radiograph(films["png"], spacing=SPACING).spacing_description() == "0.15 x 0.2 mm per pixel from the user"
    )


def test_a_calibrated_pixel_spacing_slicer_does_not_use_is_named(tmp_path, grey):
    """GDCM (Slicer, SimpleITK) takes a CR's spacing from Imager Pixel Spacing even when Pixel
    Spacing is there too; the output says which was used and that the other was not."""
    path = write_dicom(
        tmp_path / "both.dcm", grey, PixelSpacing=[0.18, 0.135], EstimatedRadiographicMagnificationFactor=1.1
    )
    film = load_radiograph(path)
    assert film.spacing == pytest.approx(SPACING)
    assert "Imager Pixel Spacing (0018,1164)" in film.spacing_source
    assert "Pixel Spacing (0028,0030) 0.135 x 0.18 mm is not used, as in Slicer" in film.spacing_source
    assert "magnification 1.1" in film.spacing_source


@pytest.mark.slow
def test_predict_gives_the_same_millimetres_for_png_monochrome2_and_monochrome1(tmp_path, films, capsys):
    import torch

    from interactive_keypoints import cli
    from interactive_keypoints.markups import read_markups_points
    from interactive_keypoints.model_io import build_model, save_model
    from interactive_keypoints.tiny_model import tiny_config

    torch.manual_seed(0)
    model = save_model(tmp_path / "model", build_model(tiny_config(landmark_names=list(SPINE.names))))
    out = tmp_path / "out"
    sx, sy = SPACING
    args = ["--model", str(model), "--device", "cpu", "--out", str(out)]
    assert cli.main(["predict", str(films["png"]), "--spacing", str(sx), str(sy), *args]) == 0
    assert cli.main(["predict", str(films["m2"]), str(films["m1"]), *args]) == 0
    printed = capsys.readouterr().out
    assert printed.count("spacing: 0.15 x 0.2 mm per pixel from Imager Pixel Spacing (0018,1164)") == 2
    assert "spacing: 0.15 x 0.2 mm per pixel from the user" in printed

    def millimetres(stem):
        with open(out / f"{stem}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return np.array([[float(r["x_mm"]), float(r["y_mm"])] for r in rows]), rows[0]["spacing"]

    png_mm, png_spacing = millimetres("film")
    for stem in ("film-m2", "film-m1"):
        mm, spacing = millimetres(stem)
        np.testing.assert_allclose(mm, png_mm, atol=1e-3)
        assert "Imager Pixel Spacing (0018,1164)" in spacing
    assert png_spacing == "0.15 x 0.2 mm per pixel from the user"
    # the .mrk.json of a DICOM sits in the patient's coordinates: read back through the file's
    # geometry it lands on the same pixels as the CSV
    film = load_radiograph(films["m2"])
    marks = read_markups_points(out / "film-m2.mrk.json", film.spacing, film.origin, film.direction)
    np.testing.assert_allclose(marks.points * SPACING, png_mm, atol=1e-3)
    first = json.loads((out / "film-m2.mrk.json").read_text())["markups"][0]["controlPoints"][0]["position"]
    assert first[1] == pytest.approx(POSITION[1])  # on the coronal plane of the film
