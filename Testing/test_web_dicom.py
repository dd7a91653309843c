"""The browser app with a DICOM film as a clinic has it (MONOCHROME1, VOI window, Imager Pixel
Spacing, a coronal Image Orientation): it is shown in its own plane, and what the page
downloads has the engine's landmarks in millimetres and names the spacing's tag.

A real trame server on a loopback port, real MRML; no browser (the page is test_web_e2e's).
"""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer.views", reason="trame-slicer with its standalone libraries is not installed")
pytest.importorskip("pydicom", reason="pydicom writes the test's DICOM files (dev extra)")
pytestmark = pytest.mark.slow  # a real trame server, scene and views

from radiographs import SPACING, grey_image, write_radiograph_files  # noqa: E402

from interactive_keypoints.web.host import SessionHost  # noqa: E402
from interactive_keypoints.web.shared_model import SharedModel  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "web"))
from web_model import save_web_test_model  # noqa: E402


@pytest.fixture
def headless(monkeypatch):
    monkeypatch.setenv("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def rows_of(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_the_browser_shows_a_coronal_dicom_in_its_plane_and_downloads_its_millimetres(tmp_path, headless):
    films = write_radiograph_files(tmp_path / "films", grey_image())
    model = save_web_test_model(tmp_path / "model")

    async def until_idle(app):
        while app.logic.runner.in_flight or (app.points is not None and app.logic.is_busy(app.points)):
            await asyncio.sleep(0.02)

    async def scenario():
        host = SessionHost(SharedModel(model), {})
        await host.open("a", str(tmp_path / "a"))
        app = host.apps["a"]
        found = {}
        for key in ("m1", "png"):
            assert app.open_file(films[key])
            slice_to_ras = app.view.get_view_node().GetSliceToRAS()
            found[key, "normal"] = [slice_to_ras.GetElement(i, 2) for i in range(3)]
            await app.detect()
            await until_idle(app)
            found[key] = rows_of(app.export_bytes(".csv"))
        await host.close_all()
        return found

    found = asyncio.run(scenario())
    # the film is coronal (its normal along A), the PNG has no orientation (axial view)
    np.testing.assert_allclose(np.abs(found["m1", "normal"]), [0.0, 1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(np.abs(found["png", "normal"]), [0.0, 0.0, 1.0], atol=1e-9)
    dicom_rows, png_rows = found["m1"], found["png"]
    assert dicom_rows[0]["spacing"] == "0.15 x 0.2 mm per pixel from Imager Pixel Spacing (0018,1164), at the detector"
    assert png_rows[0]["spacing"].startswith("unknown") and png_rows[0]["x_mm"] == ""
    pixels = np.array([[float(r["x_px"]), float(r["y_px"])] for r in dicom_rows])
    np.testing.assert_allclose(pixels, [[float(r["x_px"]), float(r["y_px"])] for r in png_rows], atol=1e-3)
    millimetres = np.array([[float(r["x_mm"]), float(r["y_mm"])] for r in dicom_rows])
    np.testing.assert_allclose(millimetres, pixels * SPACING, atol=2e-3)
