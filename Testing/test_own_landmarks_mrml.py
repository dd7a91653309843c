"""Your own landmarks in the module's logic, on real MRML nodes (slicer-core): the whole loop.

A first radiograph's points placed by hand name the template; more are added; a model is
trained in its own process (a tiny network, a few steps, transferred from a tiny model of the
68 spine corners); the set's most uncertain unannotated image is pre-annotated, a few points
corrected and confirmed, added (the others stay unreviewed: no labels); training continues
from the set's model. Phantom images throughout; nothing from ../shared/data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (pip install slicer-core) is needed for MRML tests")
pytest.importorskip("torch")
sitk = pytest.importorskip("SimpleITK")

from mrml_scene import make_scene  # noqa: E402

from interactive_keypoints import training_job  # noqa: E402
from interactive_keypoints.conventions import PREDICTED, SPINE, USER_FIXED  # noqa: E402
from interactive_keypoints.data import get_dataset  # noqa: E402
from interactive_keypoints.imaging import load_radiograph  # noqa: E402
from interactive_keypoints.model_io import load_model, save_model  # noqa: E402
from interactive_keypoints.mrml_logic import (  # noqa: E402
    TRAINING_IMAGE_ATTRIBUTE,
    KeypointsMRMLLogic,
    TrainingSetMismatchError,
    add_volume_from_radiograph,
    control_point_positions,
    ijk_to_ras_matrix,
    pixels_to_ras,
    point_states,
)
from interactive_keypoints.phantom import make_spine_phantom, write_png  # noqa: E402
from interactive_keypoints.tiny_model import tiny_model  # noqa: E402
from interactive_keypoints.training_set import AlreadyAddedError, TemplateMismatchError  # noqa: E402

pytestmark = pytest.mark.slow  # trains in a subprocess

NAMES = list(SPINE.names[:8])  # the user's own template: T1 and T2's corners
TINY = ["--width", "8", "--ocr-channels", "32", "16", "--input", "128x64", "--batch-size", "2", "--budget-clock", "cpu"]


@pytest.fixture
def scene():
    scene = make_scene()
    yield scene
    scene.Clear(1)


def phantom(seed):
    return make_spine_phantom(seed, height=256, width=128)


def film(scene, seed):
    sample = phantom(seed)
    return add_volume_from_radiograph(scene, load_radiograph(sample.image, spacing=sample.spacing), f"film{seed}")


def placed_by_hand(scene, volume, seed):
    """What a user does in the Markups module: one point per landmark, each named."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"film{seed} by hand")
    for name, ras in zip(NAMES, pixels_to_ras(phantom(seed).points[:8], ijk_to_ras_matrix(volume))):
        node.AddControlPoint(*ras, name)
    return node


@pytest.fixture
def spine_source(tmp_path):
    folder = tmp_path / "tiny68"
    save_model(folder, tiny_model(), max_shard_bytes=None)
    return folder


def test_the_whole_loop(scene, tmp_path, spine_source):
    folder = tmp_path / "hands"
    logic = KeypointsMRMLLogic(scene=scene, device="cpu")
    errors = []
    logic.on_error = errors.append

    # a first radiograph annotated by hand names the template; two more by hand
    for seed in (1, 2, 3):
        volume = film(scene, seed)
        logic.add_to_training_set(placed_by_hand(scene, volume, seed), folder, volume)
    assert json.loads((folder / "landmarks.json").read_text())["names"] == NAMES
    # images waiting to be annotated, put in the folder by the user
    for seed in (11, 12, 13):
        write_png(phantom(seed).image, folder / f"waiting{seed}.png")

    # train with a short budget in its own process, from a model of other landmarks
    job = logic.start_training(folder, minutes=0.1, start_from=spine_source, threads=1, extra=TINY)
    progress = training_job.wait(job, timeout_s=600)
    assert progress["status"] == "finished", progress
    first = progress["model"]
    assert logic.training_set_models(folder) == [first] and (first / "README.md").is_file()
    assert load_model(first).config.landmark_names == NAMES

    # annotate next: the chosen model ranks the waiting images and pre-annotates the first
    logic.set_model(first)
    ranked = logic.rank_unannotated(folder)
    assert sorted(path.name for path, _ in ranked) == ["waiting11.png", "waiting12.png", "waiting13.png"]
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    volume, points = logic.annotate_next(folder)
    assert volume.GetAttribute(TRAINING_IMAGE_ATTRIBUTE).endswith("|" + ranked[0][0].stem)
    assert [points.GetNthControlPointLabel(k) for k in range(8)] == NAMES
    assert set(point_states(points)[0]) == {PREDICTED}

    # correct two points, confirm one; the five others stay as the model put them
    truth = make_spine_phantom(int(ranked[0][0].stem[-2:]), height=256, width=128).points[:8]
    logic.refine(points, {k: pixels_to_ras(truth[k], ijk_to_ras_matrix(volume))[0] for k in (0, 5)})
    logic.confirm(points, 3)
    path = logic.add_to_training_set(points, folder)
    assert path == folder / (ranked[0][0].stem + ".mrk.json")  # next to the set's own image, no copy
    assert not list(folder.glob(f"{ranked[0][0].stem}*.nrrd"))
    split = get_dataset("folder", folder, "all")
    sample = next(s for s in split if s.id == ranked[0][0].stem)
    np.testing.assert_array_equal(sample.labelled, [k in (0, 3, 5) for k in range(8)])
    np.testing.assert_allclose(sample.points[[0, 5]], truth[[0, 5]], atol=1e-4)
    with pytest.raises(AlreadyAddedError, match="already in the training set"):
        logic.add_to_training_set(points, folder)
    logic.add_to_training_set(points, folder, replace=True)

    # continue training from the set's model with the corrected image
    job = logic.start_training(folder, minutes=0.1, continue_training=True, threads=1, extra=TINY)
    progress = training_job.wait(job, timeout_s=600)
    assert progress["status"] == "finished", progress
    assert logic.training_set_models(folder) == [first, progress["model"]]
    launch = json.loads((progress["model"] / "launch.json").read_text())["command"]
    assert launch[launch.index("--init-from") + 1] == str(first)
    assert "4 annotated" in (progress["model"] / "README.md").read_text()
    assert not errors


def test_a_list_of_other_landmarks_is_refused_and_the_set_keeps_its_files(scene, tmp_path):
    folder = tmp_path / "hands"
    logic = KeypointsMRMLLogic(scene=scene, device="cpu")
    volume = film(scene, 1)
    logic.add_to_training_set(placed_by_hand(scene, volume, 1), folder, volume)
    before = sorted(p.name for p in folder.iterdir())
    other = film(scene, 2)
    node = placed_by_hand(scene, other, 2)
    node.RemoveNthControlPoint(7)
    with pytest.raises(TemplateMismatchError, match="7 points for 8 landmarks"):
        logic.add_to_training_set(node, folder, other)
    node.SetNthControlPointLabel(0, "nose")
    with pytest.raises(TemplateMismatchError, match="not in the template nose"):
        logic.add_to_training_set(node, folder, other)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_annotate_next_needs_a_model_of_the_set_s_landmarks(scene, tmp_path):
    folder = tmp_path / "hands"
    logic = KeypointsMRMLLogic(scene=scene, model=tiny_model(), device="cpu")  # 68 spine corners
    volume = film(scene, 1)
    logic.add_to_training_set(placed_by_hand(scene, volume, 1), folder, volume)
    with pytest.raises(TrainingSetMismatchError, match="other landmarks than the training set"):
        logic.annotate_next(folder)


def test_a_point_placed_by_hand_is_a_label_and_one_being_placed_is_not(scene, tmp_path):
    folder = tmp_path / "hands"
    logic = KeypointsMRMLLogic(scene=scene, device="cpu")
    volume = film(scene, 1)
    node = placed_by_hand(scene, volume, 1)
    node.UnsetNthControlPointPosition(6)  # still being placed
    node.SetNthControlPointDescription(2, USER_FIXED)
    logic.add_to_training_set(node, folder, volume)
    for seed in (2, 3):
        other = film(scene, seed)
        logic.add_to_training_set(placed_by_hand(scene, other, seed), folder, other)
    sample = next(s for s in get_dataset("folder", folder, "all") if s.id == "film1")
    np.testing.assert_array_equal(sample.labelled, [k != 6 for k in range(8)])
    np.testing.assert_allclose(
        sample.points[:6], phantom(1).points[:6], atol=1e-4, err_msg=str(control_point_positions(node))
    )
