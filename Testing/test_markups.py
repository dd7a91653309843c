"""Slicer markups files written and read without Slicer, checked against slicer-core's reader."""

import csv
import json

import numpy as np
import pytest

from interactive_keypoints.markups import (
    MARKUPS_SCHEMA,
    MarkupsError,
    parse_description,
    read_markups_points,
    write_csv,
    write_markups_json,
)

NAMES = ["T1-top-left", "T1-top-right", "T1-bottom-left"]
POINTS = np.array([[10.25, 20.5], [40.0, 21.75], [11.5, 50.125]])
STATES = ["predicted", "user-fixed", "predicted"]
CONFIDENCE = np.array([0.93, np.nan, 0.41])
SPACING, ORIGIN = (0.5, 0.25), (3.0, -2.0)


def write_example(tmp_path, **options):
    """The example points written with spacing, origin, states and confidence."""
    return write_markups_json(
        tmp_path / "a.mrk.json",
        POINTS,
        NAMES,
        spacing=SPACING,
        origin=ORIGIN,
        states=STATES,
        confidence=CONFIDENCE,
        **options,
    )


def test_written_file_follows_the_slicer_schema(tmp_path):
    path = write_example(tmp_path, node_name="Spine")
    doc = json.loads(path.read_text())
    assert doc["@schema"] == MARKUPS_SCHEMA
    markup = doc["markups"][0]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    assert markup["name"] == "Spine"
    cp = markup["controlPoints"]
    assert [p["label"] for p in cp] == NAMES
    # LPS = origin + pixel * spacing, z = 0
    assert cp[0]["position"] == pytest.approx([3.0 + 10.25 * 0.5, -2.0 + 20.5 * 0.25, 0.0])
    assert [p["selected"] for p in cp] == [False, True, False]  # selected = user-fixed
    assert cp[0]["description"] == "predicted; confidence=0.930"
    assert cp[1]["description"] == "user-fixed"
    assert all(p["positionStatus"] == "defined" for p in cp)
    assert not list(tmp_path.glob("*.tmp"))


def test_round_trip(tmp_path):
    path = write_example(tmp_path)
    m = read_markups_points(path, spacing=SPACING, origin=ORIGIN)
    np.testing.assert_allclose(m.points, POINTS, atol=1e-9)
    assert m.names == NAMES and m.states == STATES
    np.testing.assert_allclose(m.confidence, [0.93, np.nan, 0.41])


def test_undefined_point_round_trip(tmp_path):
    points = POINTS.copy()
    points[1] = np.nan
    path = write_markups_json(tmp_path / "a.mrk.json", points, NAMES)
    assert json.loads(path.read_text())["markups"][0]["controlPoints"][1]["positionStatus"] == "missing"
    back = read_markups_points(path).points
    assert np.isnan(back[1]).all()
    np.testing.assert_allclose(back[[0, 2]], POINTS[[0, 2]])


def test_reads_ras_files(tmp_path):
    path = write_markups_json(tmp_path / "a.mrk.json", POINTS, NAMES, spacing=(2.0, 3.0))
    doc = json.loads(path.read_text())
    markup = doc["markups"][0]
    markup["coordinateSystem"] = "RAS"
    for p in markup["controlPoints"]:
        p["position"] = [-p["position"][0], -p["position"][1], p["position"][2]]
        p["description"] = ""
    ras = tmp_path / "ras.mrk.json"
    ras.write_text(json.dumps(doc))
    m = read_markups_points(ras, spacing=(2.0, 3.0))
    np.testing.assert_allclose(m.points, POINTS)
    assert m.states == ["", "", ""]


def test_parse_description():
    assert parse_description("predicted; confidence=0.5") == ("predicted", 0.5)
    state, conf = parse_description("placed by Dr. X")
    assert state == "placed by Dr. X" and np.isnan(conf)


def test_length_mismatch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="2 names for 3 points"):
        write_markups_json(tmp_path / "a.mrk.json", POINTS, NAMES[:2])


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not a JSON markups file"),
        ('{"a": 1}', "no 'markups' list"),
        ('{"markups": [{"type": "Line", "controlPoints": []}]}', "no point list"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.mrk.json"
    path.write_text(text)
    with pytest.raises(MarkupsError, match=message):
        read_markups_points(path)


def test_missing_file(tmp_path):
    with pytest.raises(MarkupsError, match="not found"):
        read_markups_points(tmp_path / "none.mrk.json")


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv(tmp_path):
    path = write_csv(tmp_path / "a.csv", NAMES, POINTS, spacing=(0.5, 0.25), states=STATES, confidence=CONFIDENCE)
    rows = _read_csv(path)
    assert list(rows[0]) == ["name", "x_px", "y_px", "x_mm", "y_mm", "state", "confidence", "spacing"]
    assert rows[0]["name"] == "T1-top-left"
    assert rows[0]["spacing"] == "0.5 x 0.25 mm per pixel"
    assert float(rows[0]["x_mm"]) == pytest.approx(5.125) and float(rows[0]["y_mm"]) == pytest.approx(5.125)
    assert rows[1]["state"] == "user-fixed" and rows[1]["confidence"] == ""
    no_spacing = _read_csv(write_csv(tmp_path / "b.csv", NAMES, POINTS))
    assert no_spacing[2]["x_mm"] == "" and float(no_spacing[2]["y_px"]) == pytest.approx(50.125)
    assert no_spacing[0]["spacing"].startswith("unknown")


# ------------------------------------------------------------------ real Slicer reader


@pytest.fixture
def mrml_scene():
    slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) not installed")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()  # adds the selection/interaction singletons
    app_logic.SetMRMLScene(scene)
    yield slicer, scene
    app_logic.SetMRMLScene(None)


def test_slicer_reads_our_file(tmp_path, mrml_scene):
    slicer, scene = mrml_scene
    spacing = (0.5, 0.25)
    path = write_markups_json(
        tmp_path / "a.mrk.json", POINTS, NAMES, spacing=spacing, states=STATES, confidence=CONFIDENCE, node_name="Spine"
    )
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    assert node.GetNumberOfControlPoints() == 3
    assert node.GetName() == "Spine"
    for i, (x, y) in enumerate(POINTS):
        assert node.GetNthControlPointLabel(i) == NAMES[i]
        # Slicer shows a PNG pixel (x, y) at RAS (-x * sx, -y * sy, 0)
        np.testing.assert_allclose(node.GetNthControlPointPositionVector(i), [-x * spacing[0], -y * spacing[1], 0.0])
        assert bool(node.GetNthControlPointSelected(i)) == (STATES[i] == "user-fixed")
    assert node.GetNthControlPointDescription(0) == "predicted; confidence=0.930"


def test_we_read_slicers_file(tmp_path, mrml_scene):
    slicer, scene = mrml_scene
    import vtk

    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "FromSlicer")
    node.AddControlPoint(vtk.vtkVector3d(-5.0, -12.5, 0.0), "A")
    node.AddControlPoint(vtk.vtkVector3d(-1.0, -2.0, 0.0), "B")
    node.SetNthControlPointDescription(1, "user-fixed")
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(tmp_path / "s.mrk.json"))
    assert storage.WriteData(node) == 1
    m = read_markups_points(tmp_path / "s.mrk.json", spacing=(0.5, 0.25))
    np.testing.assert_allclose(m.points, [[10.0, 50.0], [2.0, 8.0]])
    assert m.names == ["A", "B"] and m.states == ["", "user-fixed"]
