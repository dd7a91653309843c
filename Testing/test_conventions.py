"""The shared facts: landmark templates, point states and colours, file names, pixel geometry."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from interactive_keypoints.conventions import (
    CEPH,
    FIXED_COLOR,
    IMAGE_SUFFIXES,
    PREDICTED_COLOR,
    SPINE,
    LandmarkTemplate,
    file_stem,
    header_spacing,
    hex_color,
    inside_image,
    is_image_name,
    output_path,
    output_stem,
    pixels_to_mm,
    radial_errors,
    spine_template,
    state_names,
)


def test_needs_no_torch():
    script = "import sys, interactive_keypoints.conventions; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# ------------------------------------------------------------------ landmark templates


def test_spine_template_is_the_aasce_order_with_left_right_pairs():
    assert SPINE.num_keypoints == 68 and len(set(SPINE.names)) == 68
    assert SPINE.names[:4] == ("T1-top-left", "T1-top-right", "T1-bottom-left", "T1-bottom-right")
    assert SPINE.names[-1] == "L5-bottom-right"
    assert len(SPINE.flip_pairs) == 34 and SPINE.flip_allowed
    for i, j in SPINE.flip_pairs:
        assert SPINE.names[i].replace("left", "right") == SPINE.names[j]


def test_ceph_template_has_19_landmarks_and_no_mirror():
    assert CEPH.num_keypoints == 19
    assert (CEPH.names[0], CEPH.names[1], CEPH.names[-1]) == ("sella", "nasion", "articulare")
    assert CEPH.flip_pairs == () and not CEPH.flip_allowed


def test_template_checks_its_names_and_pairs():
    with pytest.raises(ValueError, match="distinct names"):
        LandmarkTemplate(("a", "a"))
    with pytest.raises(ValueError, match="distinct names"):
        LandmarkTemplate(())
    with pytest.raises(ValueError, match=r"flip pair\(s\) \[\(0, 2\)\] outside"):
        LandmarkTemplate(("a", "b"), ((0, 2),))
    assert LandmarkTemplate(("a", "b"), ((0, 1),)).flip_allowed  # pairs: a mirror is meaningful
    assert not LandmarkTemplate(("a", "b")).flip_allowed  # none: only when the user says so
    assert LandmarkTemplate(("a", "b"), flip_allowed=True).flip_allowed


def test_template_json_round_trip():
    assert LandmarkTemplate.from_json(json.loads(json.dumps(SPINE.to_json()))) == SPINE
    assert LandmarkTemplate.from_json({"names": ["x", "y"]}) == LandmarkTemplate(("x", "y"))
    assert spine_template(["V1"]).names == ("V1-top-left", "V1-top-right", "V1-bottom-left", "V1-bottom-right")


# --------------------------------------------------------------- point states, colours


def test_states_and_the_one_palette():
    assert state_names([True, False]) == ["user-fixed", "predicted"]
    assert hex_color(PREDICTED_COLOR) == "#ffbf33" and hex_color(FIXED_COLOR) == "#4dff66"


def test_written_markups_use_the_palette(tmp_path):
    from interactive_keypoints.markups import write_markups_json

    path = write_markups_json(tmp_path / "a.mrk.json", np.zeros((1, 2)), ["a"])
    display = json.loads(path.read_text())["markups"][0]["display"]
    assert (tuple(display["color"]), tuple(display["selectedColor"])) == (PREDICTED_COLOR, FIXED_COLOR)


# ------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    "name, stem",
    [
        ("scan.nii.gz", "scan"),
        ("Scan.NII.GZ", "Scan"),
        ("scan.mrk.json", "scan"),
        ("scan.v2.png", "scan.v2"),
        ("scan.measurements.csv", "scan"),
        ("scan.dcm", "scan"),
        ("scan", "scan"),
    ],
)
def test_file_stem(name, stem):
    assert file_stem(Path("/data") / name) == stem


def test_image_names_and_output_paths():
    assert all(is_image_name("x" + s) for s in IMAGE_SUFFIXES)
    assert is_image_name("X.PNG") and not is_image_name("._x.png") and not is_image_name("x.mrk.json")
    assert output_stem(Path("/in/scan.nii.gz")) == Path("/in/scan")
    assert output_stem(Path("/in/scan.nii.gz"), Path("/out")) == Path("/out/scan")
    assert output_path(Path("/out/scan.v2"), ".mrk.json") == Path("/out/scan.v2.mrk.json")


# --------------------------------------------------------------------- pixel geometry


def test_inside_image_counts_edges_in_and_nan_out():
    size = (10, 20)  # (H, W): x in [-0.5, 19.5], y in [-0.5, 9.5]
    points = [[-0.5, -0.5], [19.5, 9.5], [-0.51, 0.0], [0.0, 9.51], [np.nan, 1.0]]
    assert inside_image(points, size).tolist() == [True, True, False, False, False]
    assert inside_image((3.0, 4.0), size) is True
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        inside_image(np.zeros((2, 3)), size)


def test_radial_errors_in_pixels_and_mm():
    np.testing.assert_allclose(pixels_to_mm([[10.0, 4.0]], (0.5, 0.25)), [[5.0, 1.0]])
    np.testing.assert_allclose(radial_errors([[6.0, 16.0]], [[0.0, 0.0]]), [np.hypot(6, 16)])
    np.testing.assert_allclose(radial_errors([[6.0, 16.0]], [[0.0, 0.0]], (0.5, 0.25)), [5.0])
    with pytest.raises(ValueError):
        radial_errors(np.zeros((3, 3)), np.zeros((3, 3)))


def test_header_spacing_ignores_print_resolution_and_the_default():
    assert header_spacing("PNGImageIO", (0.35, 0.35)) == ((1.0, 1.0), False)
    assert header_spacing("NrrdImageIO", (1.0, 1.0)) == ((1.0, 1.0), False)
    assert header_spacing("GDCMImageIO", (0.1, 0.2)) == ((0.1, 0.2), True)
