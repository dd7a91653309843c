"""Clinical measurements: Cobb angles on spines built from known tilts and on the AASCE
ground truth, the ISBI ceph analysis on hand-made geometry."""

import numpy as np
import pytest
from conftest import shared_dataset

from interactive_keypoints.measurements import (
    CEPH_CLASSES,
    ceph_analysis,
    ceph_class,
    cobb_angles,
    has_s_shape,
    measure,
    write_measurements,
)
from interactive_keypoints.metrics import cobb_smape

WIDTH, HEIGHT, PITCH = 40.0, 30.0, 50.0  # vertebra body and centre-to-centre distance (px)


def spine(tilts_deg, centre_x):
    """68 corners (TL, TR, BL, BR per vertebra) of rectangles rotated by known tilts."""
    points = []
    for i, (tilt, cx) in enumerate(zip(np.radians(tilts_deg), centre_x)):
        rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
        centre = np.array([cx, 100.0 + PITCH * i])
        for dx, dy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
            points.append(centre + rot @ np.array([dx * WIDTH / 2, dy * HEIGHT / 2]))
    return np.array(points)


ROWS = np.arange(17)
C_SHAPE = 100 + 30 * np.sin(np.pi * ROWS / 16)  # all of the spine bulges to one side
S_SHAPE = 100 + 30 * np.sin(2 * np.pi * ROWS / 16)  # crosses its end-to-end line


def values(records):
    return {m.name: m.value for m in records}


def test_c_curve_takes_the_end_vertebrae_of_the_spine_for_the_minor_curves():
    tilts = [-5, -12, -20, -15, -10, -5, 0, 5, 10, 15, 20, 25, 18, 12, 8, 6, 5]
    points = spine(tilts, C_SHAPE)
    assert not has_s_shape((points[0::2] + points[1::2]) / 2)
    records = cobb_angles(points, image_height=1200)
    assert values(records) == pytest.approx({"Cobb MT": 45.0, "Cobb PT": 15.0, "Cobb TL": 20.0})
    assert [m.extra["end_vertebrae"] for m in records] == [["T3", "T12"], ["T1", "T3"], ["T12", "L5"]]
    major = records[0]
    assert major.landmarks == (8, 9, 10, 11, 44, 45, 46, 47) and major.unit == "deg"
    (a, b), _ = major.lines  # the upper end vertebra's tilt line, left edge midpoint to right
    assert np.degrees(np.arctan2(b[1] - a[1], b[0] - a[0])) == pytest.approx(-20.0)


S_TILTS = [0, 10, 5, 0, -10, -20, -25, -30, -25, -20, -10, -5, 0, 5, 2, 0, -2]


def test_s_curve_with_an_upper_major_curve_looks_above_and_below_it():
    points = spine(S_TILTS, S_SHAPE)
    assert has_s_shape((points[0::2] + points[1::2]) / 2)
    records = cobb_angles(points, image_height=1200)  # major curve T2-T8 in the upper half
    assert values(records) == pytest.approx({"Cobb MT": 40.0, "Cobb PT": 10.0, "Cobb TL": 35.0})
    assert [m.extra["end_vertebrae"] for m in records] == [["T2", "T8"], ["T1", "T2"], ["T8", "L2"]]


def test_s_curve_with_a_lower_major_curve_takes_two_curves_above_it():
    points = spine(S_TILTS, S_SHAPE)
    records = cobb_angles(points, image_height=500)  # same spine, now in the lower half
    assert values(records) == pytest.approx({"Cobb MT": 40.0, "Cobb PT": 10.0, "Cobb TL": 0.0})
    assert records[2].extra["curve"] == "above the curve above major"


def test_cobb_angles_are_measured_in_physical_space():
    tilts = [-5, -12, -20, -15, -10, -5, 0, 5, 10, 15, 20, 25, 18, 12, 8, 6, 5]
    physical = spine(tilts, C_SHAPE)
    spacing = (0.5, 2.0)  # tall pixels: the same anatomy is squashed vertically in pixels
    pixels = physical / np.array(spacing)
    squashed = values(cobb_angles(pixels, image_height=1200))
    assert squashed["Cobb MT"] != pytest.approx(45.0, abs=1)
    assert values(cobb_angles(pixels, spacing, image_height=1200 / 2.0))["Cobb MT"] == pytest.approx(45.0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"\(68, 2\) points"):
        measure(np.zeros((19, 2)), "aasce-cobb")
    with pytest.raises(ValueError, match="NaN"):
        measure(np.full((19, 2), np.nan), "isbi-ceph")
    with pytest.raises(ValueError, match="unknown measurement set 'hips'"):
        measure(np.zeros((68, 2)), "hips")
    with pytest.raises(ValueError, match="left and right edge midpoints"):
        cobb_angles(np.zeros((68, 2)))
    assert measure(np.zeros((5, 2)), "") == []


@pytest.mark.slow
def test_cobb_angles_match_the_aasce_training_labels():
    """The three angles of every usable training label against the dataset's angles.csv."""
    from interactive_keypoints.data import get_dataset

    root = shared_dataset("boostnet_labeldata")
    labels = root / "labels" / "training"
    names = [line.strip() for line in (labels / "filenames.csv").read_text().splitlines() if line.strip()]
    truth = dict(zip(names, np.loadtxt(labels / "angles.csv", delimiter=",")))
    samples = get_dataset("aasce", root, "train").samples + get_dataset("aasce", root, "val").samples
    assert len(samples) >= 470
    computed = [[m.value for m in cobb_angles(s.points, image_height=s.image_size[0])] for s in samples]
    smape = cobb_smape(computed, [truth[s.id] for s in samples])
    assert smape <= 1.0, f"Cobb SMAPE {smape:.3f} % against angles.csv"


def test_cobb_smape_is_the_challenge_formula():
    assert cobb_smape([[10, 0, 0], [20, 10, 0]], [[10, 0, 0], [10, 10, 0]]) == pytest.approx(100 * (0 + 10 / 50) / 2)
    assert cobb_smape([[0, 0, 0]], [[0, 0, 0]]) == 0.0
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        cobb_smape([[1, 2, 3]], [[1, 2]])


# ------------------------------------------------------------------ cephalometry


def ceph(face_right=True):
    """19 landmarks with hand-set geometry, in mm (x forward when face_right, y down).

    FH horizontal; S-N horizontal; A at 82 deg and B at 79 deg below S-N seen from N;
    mandibular plane (Go-Me) falling 25 deg forward; palatal plane rising 3 deg forward;
    N-Pog vertical; upper incisal tip 3 mm ahead of the lower one.
    """
    p = np.zeros((19, 2))
    p[0] = (0, 0)  # sella
    p[1] = (70, 0)  # nasion
    p[2] = (60, 20)  # orbitale
    p[3] = (-10, 20)  # porion
    p[4] = p[1] + 55 * np.array([-np.cos(np.radians(82)), np.sin(np.radians(82))])  # A
    p[5] = p[1] + 95 * np.array([-np.cos(np.radians(79)), np.sin(np.radians(79))])  # B, lower, behind A
    p[6] = (70, 110)  # pogonion, below nasion: N-Pog vertical
    p[7] = (60, 120)  # menton
    p[8] = (66, 117)  # gnathion
    p[9] = (60 - 90 * np.cos(np.radians(25)), 120 - 90 * np.sin(np.radians(25)))  # gonion
    p[10] = (60, 65)  # lower incisal tip
    p[11] = (63, 65)  # upper incisal tip
    p[12], p[13], p[14], p[15] = (80, 60), (78, 75), (80, 45), (75, 115)
    p[16] = (10, 40 + 50 * np.tan(np.radians(3)))  # PNS
    p[17] = (60, 40)  # ANS, higher than PNS: palatal plane rises forwards
    p[18] = (-5, 35)  # articulare
    if not face_right:
        p[:, 0] = 200 - p[:, 0]
    return p


def test_ceph_analysis_on_known_geometry():
    p = ceph()
    assert np.degrees(np.arctan2(p[4][1] - p[1][1], p[1][0] - p[4][0])) == pytest.approx(82.0)
    got = values(ceph_analysis(p / 0.1, spacing=(0.1, 0.1)))  # 0.1 mm pixels like ISBI
    fhi = np.linalg.norm(p[0] - p[9]) / np.linalg.norm(p[1] - p[7])
    assert fhi == pytest.approx(0.70, abs=0.01)
    b_behind = np.degrees(np.arctan2(p[4][0] - p[5][0], p[5][1] - p[4][1]))  # A-B line off vertical, B behind
    assert b_behind == pytest.approx(15.1, abs=0.1)
    go_gn = np.degrees(np.arctan2(p[8][1] - p[9][1], p[8][0] - p[9][0]))  # Go-Gn below the horizontal S-N
    assert go_gn == pytest.approx(21.8, abs=0.1)
    expected = {  # ODI: AB to MP (90 - 25 + tilt) + PP to FH (-3, tipped up); APDI: 90 + AB to N-Pog (-tilt) + PP to FH
        "SNA": 82,
        "SNB": 79,
        "ANB": 3,
        "FMA": go_gn,
        "ODI": 65 + b_behind - 3,
        "APDI": 90 - b_behind - 3,
        "FHI": fhi,
        "MW": 3,
    }
    assert got == pytest.approx(expected)
    records = ceph_analysis(p / 0.1, spacing=(0.1, 0.1))
    assert {m.name: m.category for m in records} == {
        "SNA": "normal maxilla", "SNB": "prognathic mandible", "ANB": "class III", "ODI": "normal",
        "APDI": "class II tendency", "FHI": "normal",
        "FMA": "low angle tendency", "MW": "normal occlusion",
    }  # fmt: skip
    assert {m.name: m.extra["isbi_type"] for m in records} == {
        "SNA": 1, "SNB": 3, "ANB": 3, "ODI": 1, "APDI": 2, "FHI": 1, "FMA": 3, "MW": 1}  # fmt: skip


def test_ceph_analysis_does_not_depend_on_facing_side_or_head_rotation():
    reference = values(ceph_analysis(ceph(), spacing=(1, 1)))
    assert values(ceph_analysis(ceph(face_right=False), spacing=(1, 1))) == pytest.approx(reference)
    turn = np.radians(7)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    assert values(ceph_analysis(ceph() @ rot.T, spacing=(1, 1))) == pytest.approx(reference)


def test_mw_turns_negative_and_crossbite_when_the_lower_incisor_is_ahead():
    p = ceph()
    p[10] = (66, 65)  # lower tip now 3 mm ahead of the upper one
    mw = {m.name: m for m in ceph_analysis(p, spacing=(1, 1))}["MW"]
    assert mw.value == pytest.approx(-3) and mw.category == "anterior crossbite" and mw.landmarks == (11, 10)


def test_ceph_classes_follow_the_challenge_thresholds():
    assert [ceph_class("ANB", v) for v in (3.1, 3.2, 5.7, 5.8)] == [
        "class III",
        "class I (normal)",
        "class I (normal)",
        "class II",
    ]
    assert [ceph_class("MW", v) for v in (-0.1, 0.0, 2.0, 4.6)] == [
        "anterior crossbite",
        "edge to edge",
        "normal occlusion",
        "large overjet",
    ]
    assert ceph_class("MW", 1.0) == "anterior crossbite"  # the challenge's code: below 2 and not 0
    assert [ceph_class("APDI", v) for v in (77.5, 81, 85.3)] == ["class II tendency", "normal", "class III tendency"]
    assert [ceph_class("FHI", v) for v in (0.64, 0.7, 0.76)] == ["long face tendency", "normal", "short face tendency"]
    assert set(CEPH_CLASSES) == {"ANB", "SNB", "SNA", "ODI", "APDI", "FHI", "FMA", "MW"}


def challenge_formulation(p):
    """The eight values as the ISBI 2015 evaluation code states them, in image pixels
    (x right, y down, face to the right): unsigned angles between directed lines, signed by
    the 2D cross product; MW in mm at 0.1 mm per pixel."""

    def angle(u, v):
        return np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))

    def signed(u, v, negative_when):  # the angle, negated on the given side of u
        cross = u[0] * v[1] - u[1] * v[0]
        return -angle(u, v) if negative_when(cross) else angle(u, v)

    s_, n, or_, po, a, b, pog, me, gn, go, lit, uit = p[:12]
    pns, ans = p[16], p[17]
    sna, snb = angle(s_ - n, a - n), angle(s_ - n, b - n)
    palatal = signed(or_ - po, ans - pns, lambda c: c < 0)
    return {
        "SNA": sna, "SNB": snb, "ANB": sna - snb,
        "ODI": angle(go - me, a - b) + palatal,
        "APDI": angle(po - or_, pog - n) + signed(pog - n, b - a, lambda c: c > 0) + palatal,
        "FHI": np.linalg.norm(s_ - go) / np.linalg.norm(n - me),
        "FMA": angle(n - s_, gn - go),
        "MW": np.linalg.norm(uit - lit) / 10 * (-1 if uit[0] < lit[0] else 1),
    }  # fmt: skip


def test_ceph_analysis_matches_the_challenge_evaluation_code_on_the_isbi_ground_truth():
    """All 300 public ground truths: the same value and class as the challenge's own code."""
    from interactive_keypoints.data import get_dataset

    root = shared_dataset("ISBI2015")
    samples = get_dataset("isbi", root, "train").samples + get_dataset("isbi", root, "test1").samples
    assert len(samples) == 300
    seen_classes = set()
    for sample in samples:
        reference = challenge_formulation(sample.points)
        records = ceph_analysis(sample.points, spacing=(0.1, 0.1))
        assert values(records) == pytest.approx(reference, abs=1e-6), sample.id
        assert all(m.category == ceph_class(m.name, reference[m.name]) for m in records), sample.id
        seen_classes |= {(m.name, m.category) for m in records}
    assert len(seen_classes) >= 20  # the images span most classes, so the test can tell them apart


def test_unknown_spacing_keeps_lengths_in_pixels_without_mw_class():
    mw = {m.name: m for m in ceph_analysis(ceph() / 0.1)}["MW"]
    assert mw.unit == "px" and mw.value == pytest.approx(30) and mw.category == ""


def test_write_measurements(tmp_path):
    records = ceph_analysis(ceph(), spacing=(1, 1))
    json_path, csv_path = write_measurements(tmp_path / "case", records, "isbi-ceph")
    import csv
    import json

    data = json.loads(json_path.read_text())
    assert data["measurement_set"] == "isbi-ceph" and data["measurements"][0]["name"] == "SNA"
    assert len(data["measurements"][0]["lines"]) == 2
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["name"] for r in rows] == ["SNA", "SNB", "ANB", "ODI", "APDI", "FHI", "FMA", "MW"]
    assert float(rows[0]["value"]) == pytest.approx(82) and rows[0]["class"] == "normal maxilla"


# ------------------------------------------------------------------ model config and evaluate


def test_model_config_names_the_measurement_set(tmp_path):
    import json

    from conftest import REPO_ROOT

    from interactive_keypoints.config import ModelConfig, ModelFormatError
    from interactive_keypoints.tiny_model import tiny_config

    shipped = {
        p.parent.name: json.loads(p.read_text()).get("measurements")
        for p in (REPO_ROOT / "models").glob("*/model.json")
    }
    assert shipped == {"aasce-spine-68": "aasce-cobb", "phantom-spine-68": "aasce-cobb", "isbi-ceph-19": "isbi-ceph"}
    assert tiny_config().measurements == ""  # a model without one shows none
    with pytest.raises(ModelFormatError, match="measurements must be one of"):
        tiny_config(measurements="hips")
    with pytest.raises(ModelFormatError, match="do not fit 68 keypoints"):
        tiny_config(measurements="isbi-ceph")
    assert ModelConfig.from_dict(tiny_config(measurements="aasce-cobb").to_dict()).measurements == "aasce-cobb"


def test_fine_tunes_may_change_the_measurement_set_and_train_sets_it_per_dataset():
    from interactive_keypoints import train
    from interactive_keypoints.data import get_dataset

    assert "measurements" in train.NOT_ARCHITECTURE
    args = train.build_parser().parse_args(["--dataset", "phantom", "--input", "128x64", "--width", "8", "--out", "x"])
    model = train.train_config(args).model
    assert (
        train.make_config(model, get_dataset("phantom", split="train", num_images=1), "phantom").measurements
        == "aasce-cobb"
    )


@pytest.mark.slow
def test_evaluate_reports_cobb_angles_after_each_click(tmp_path, tiny_model):
    import json

    from interactive_keypoints import cli
    from interactive_keypoints.model_io import save_model

    tiny_model.config.measurements = "aasce-cobb"
    save_model(tmp_path / "model", tiny_model)
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--model", str(tmp_path / "model"), "--dataset", "phantom", "--phantom-images", "2",
                     "--max-clicks", "2", "--targets", "20", "--threads", "1", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "measurements.json").read_text())
    assert report["names"] == ["Cobb MT", "Cobb PT", "Cobb TL"] and len(report["SMAPE_by_clicks"]) == 3
    assert all(0 <= v <= 100 for v in report["SMAPE_by_clicks"]) and len(report["MAE_by_clicks"]["Cobb MT"]) == 3
    rows = (out / "measurements_per_image.csv").read_text().splitlines()
    assert rows[0] == "id,measurement,truth,clicks_0,clicks_1,clicks_2" and len(rows) == 1 + 2 * 3
    assert (out / "measurements_vs_clicks.png").stat().st_size > 1000


def test_evaluate_scores_ceph_classes_against_the_truths_classes():
    from types import SimpleNamespace

    from interactive_keypoints.data.common import KeypointSample
    from interactive_keypoints.evaluate import summarise_measurements

    truth = ceph() / 0.1
    moved = truth.copy()
    moved[10] += (25, 0)  # lower incisor 2.5 mm forward: MW 3 -> 0.5 mm, another class
    sample = KeypointSample("case", truth, spacing=(0.1, 0.1), spacing_known=True, image_size=(2400, 1935))
    result = SimpleNamespace(points_by_clicks=np.stack([moved, truth]))  # 0 clicks wrong, 1 click right
    report = summarise_measurements([result], [sample], "isbi-ceph")
    assert report["accuracy_by_clicks"]["MW"] == [0.0, 100.0]
    assert report["accuracy_by_clicks"]["SNA"] == [100.0, 100.0]
    assert report["MAE_by_clicks"]["MW"] == pytest.approx([2.5, 0.0])
    assert report["mean_accuracy_by_clicks"] == pytest.approx([100 * 7 / 8, 100.0])
