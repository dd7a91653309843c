"""Your own landmarks, the engine's side: training sets (template, adding, bad input), which
points are labels, the masked loss, transfer from a model of other landmarks, the training
process (progress, card, cancel and resume), and choosing where to start from."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from interactive_keypoints import recipe, train, training_job
from interactive_keypoints.conventions import CEPH, PREDICTED, SPINE, USER_FIXED, LandmarkTemplate
from interactive_keypoints.data import get_dataset, get_split_ids
from interactive_keypoints.data.folder import split_ids
from interactive_keypoints.model_io import load_model, save_model
from interactive_keypoints.phantom import make_spine_phantom
from interactive_keypoints.tiny_model import tiny_model
from interactive_keypoints.training_set import (
    AlreadyAddedError,
    TemplateMismatchError,
    TrainingSetError,
    add_image,
    create_training_set,
    template_from_names,
    trained_models,
    unannotated_images,
)

NAMES = list(SPINE.names[:8])  # T1 and T2's corners: a template of 8 landmarks
TINY_TRAIN = ["--width", "8", "--ocr-channels", "32", "16", "--input", "128x64", "--batch-size", "2"]


def phantom(seed: int):
    return make_spine_phantom(seed, height=256, width=128)


def add_phantom(folder, seed, states=None, name=None, **options):
    sample = phantom(seed)
    states = states or [""] * len(NAMES)  # placed by hand: no state
    return add_image(
        folder, sample.image, sample.spacing, sample.points[:8], NAMES, states, name or f"film{seed}", **options
    )


def write_set(folder, seeds=(1, 2, 3, 4, 5)):
    for seed in seeds:
        add_phantom(folder, seed)
    return folder


def files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------ the set


def test_the_first_list_names_the_template_and_pairs_its_sides(tmp_path):
    path = add_phantom(tmp_path / "set", 1)
    assert path.name == "film1.mrk.json" and (tmp_path / "set" / "film1.nrrd").is_file()
    template = json.loads((tmp_path / "set" / "landmarks.json").read_text())
    assert template["names"] == NAMES
    assert template["flip_pairs"] == [[0, 1], [2, 3], [4, 5], [6, 7]] and template["flip_allowed"]
    record = json.loads((tmp_path / "set" / "training_set.json").read_text())
    assert record["format_version"] == 1 and set(record["images"]) == {"film1"}
    # the folder reads back the image and its labels to the pixel
    loaded = get_dataset("folder", tmp_path / "set", "all")
    np.testing.assert_allclose(loaded[0].points, phantom(1).points[:8], atol=1e-6)
    assert loaded[0].spacing == phantom(1).spacing and loaded[0].labelled is None


def test_a_template_from_a_json_file_or_names_without_sides(tmp_path):
    assert template_from_names(["sella", "nasion"]).flip_pairs == ()
    assert not template_from_names(["sella", "nasion"]).flip_allowed
    assert template_from_names(["left ear", "nose", "Right ear"]).flip_pairs == ()  # case differs: no pair
    assert template_from_names(["left ear", "nose", "right ear"]).flip_pairs == ((0, 2),)
    with pytest.raises(TemplateMismatchError, match="used twice"):
        template_from_names(["a", "b", "a"])


def test_a_list_of_other_landmarks_is_refused_and_nothing_is_written(tmp_path):
    folder = write_set(tmp_path / "set", seeds=(1,))
    before = files(folder)
    sample = phantom(2)
    with pytest.raises(TemplateMismatchError, match="7 points for 8 landmarks; missing T2-bottom-right"):
        add_image(folder, sample.image, sample.spacing, sample.points[:7], NAMES[:7], [""] * 7, "film2")
    with pytest.raises(TemplateMismatchError, match="not in the template nose"):
        add_image(folder, sample.image, sample.spacing, sample.points[:8], [*NAMES[:7], "nose"], [""] * 8, "film2")
    assert files(folder) == before
    # the same names in another order are the same landmarks
    reversed_path = add_image(
        folder, sample.image, sample.spacing, sample.points[:8][::-1], NAMES[::-1], [""] * 8, "film2"
    )
    np.testing.assert_allclose(get_dataset("folder", folder, "all").samples[1].points, sample.points[:8], atol=1e-6)
    assert reversed_path.name == "film2.mrk.json"


def test_an_image_added_twice_is_refused_unless_its_points_are_replaced(tmp_path):
    folder = write_set(tmp_path / "set", seeds=(1,))
    before = {name: (folder / name).read_bytes() for name in files(folder)}
    with pytest.raises(AlreadyAddedError, match="already in the training set as 'film1'"):
        add_phantom(folder, 1, name="another name")  # the same pixels under another name
    assert {name: (folder / name).read_bytes() for name in files(folder)} == before
    states = [USER_FIXED] * 4 + [PREDICTED] * 4
    add_phantom(folder, 1, states=states, name="another name", replace=True)
    assert files(folder) == sorted(before)  # no second image
    np.testing.assert_array_equal(get_dataset("folder", folder, "all")[0].labelled, [True] * 4 + [False] * 4)
    # another image of the same name gets a name of its own
    assert add_phantom(folder, 2, name="film1").name == "film1_2.mrk.json"


def test_a_set_written_by_a_newer_version_is_refused_everywhere(tmp_path):
    folder = write_set(tmp_path / "set", seeds=(1, 2, 3))
    record = json.loads((folder / "training_set.json").read_text())
    (folder / "training_set.json").write_text(json.dumps(record | {"format_version": 2}))
    before = files(folder)
    with pytest.raises(TrainingSetError, match="newer version.*format 2"):
        add_phantom(folder, 4)
    with pytest.raises(TrainingSetError, match="newer version"):
        get_dataset("folder", folder, "train")
    assert files(folder) == before


def test_another_template_in_the_folder_is_refused(tmp_path):
    folder = write_set(tmp_path / "set", seeds=(1,))
    with pytest.raises(TemplateMismatchError, match="other landmarks"):
        create_training_set(folder, LandmarkTemplate(("a", "b")))


# ------------------------------------------------------------------ labels and splits


def test_only_reviewed_points_are_labels_and_held_back_images_are_complete(tmp_path):
    folder = write_set(tmp_path / "set", seeds=(1, 2, 3, 4))
    add_phantom(folder, 5, states=[PREDICTED] * 6 + [USER_FIXED, ""])  # partly reviewed
    add_phantom(folder, 6, states=[PREDICTED] * 8)  # the model's points, nobody looked: not annotated
    splits = get_split_ids("folder", folder)
    assert splits["all"] == ["film1", "film2", "film3", "film4", "film5"]
    assert len(splits["val"]) == 1 and "film5" not in splits["val"]
    train_split = get_dataset("folder", folder, "train")
    partial = next(s for s in train_split if s.id == "film5")
    np.testing.assert_array_equal(partial.labelled, [False] * 6 + [True, True])
    assert [path.name for path in unannotated_images(folder)] == []  # film6 has its (unreviewed) points
    assert "film6" not in splits["all"]


def test_held_back_images_stay_held_back_when_images_are_added(tmp_path):
    folder = write_set(tmp_path / "set", seeds=range(1, 11))
    before = split_ids(folder)
    write_set(folder, seeds=range(11, 16))
    after = split_ids(folder)
    assert set(before["val"]) <= set(after["val"]) or set(after["val"]) <= set(before["val"])
    assert not set(before["train"]) & set(after["val"])  # nothing trained on is held back later


def test_too_few_images_to_hold_any_back_is_a_clear_message(tmp_path):
    folder = write_set(tmp_path / "set", seeds=(1, 2))
    with pytest.raises(TrainingSetError, match="2 annotated image.*at least 3"):
        get_dataset("folder", folder, "train")
    for seed in (3, 4):
        add_phantom(folder, seed, states=[USER_FIXED] + [PREDICTED] * 7)
    for name in ("film1", "film2"):
        (folder / f"{name}.mrk.json").unlink()
    with pytest.raises(TrainingSetError, match="none of its 2 annotated image.*fully reviewed"):
        get_dataset("folder", folder, "val")


def masked_batch(labelled):
    from interactive_keypoints.data import KeypointTrainingDataset

    split = get_dataset("phantom", split="train", num_images=2, height=128, width=64)
    for sample in split:
        sample.labelled = np.asarray(labelled)
    data = KeypointTrainingDataset(split, (128, 64), augment=False)
    return split, torch.utils.data.default_collate([data[0], data[1]])


@pytest.mark.slow
def test_points_that_are_no_labels_do_not_reach_the_loss():
    model = tiny_model()
    network = model.network.train()
    labelled = np.arange(68) >= 8  # the first 8 points not reviewed
    split, batch = masked_batch(labelled)
    interaction = recipe.InteractionSection(iterative_max=0, click_pass_bn="eval", train_prev="all")
    loss_term = recipe.LossSection(morphology_weight=0.01)
    from interactive_keypoints.morphology import select_morphology

    selection = select_morphology(split.points_array(), split.image_sizes(), "low", 10, 10)

    def loss(points):
        torch.manual_seed(0)
        step_batch = dict(batch, points=points)
        heat, morph = train.training_step(
            network, step_batch, np.random.default_rng(0), model.config, selection, interaction, loss_term,
            torch.device("cpu"), nullcontext, channels_last=False,
        )  # fmt: skip
        return float((heat + morph).detach())

    moved_unlabelled, moved_label = batch["points"].clone(), batch["points"].clone()
    moved_unlabelled[:, :8] += 9.0
    moved_label[:, 20] += 9.0
    assert loss(moved_unlabelled) == pytest.approx(loss(batch["points"]), rel=1e-6)
    assert loss(moved_label) != pytest.approx(loss(batch["points"]), rel=1e-6)
    # a flip swaps the mask with the points it belongs to
    assert batch["labelled"].shape == (2, 68) and not batch["labelled"][:, :8].any()


# ------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def spine_source(tmp_path_factory):
    """A tiny model of the 68 spine corners: another template to start from."""
    folder = tmp_path_factory.mktemp("source") / "tiny68"
    save_model(folder, tiny_model(), max_shard_bytes=None)
    return folder


@pytest.mark.slow
def test_init_from_a_model_of_other_landmarks_transfers_all_but_the_landmark_layers(tmp_path, spine_source):
    folder = write_set(tmp_path / "set")
    out = tmp_path / "run"
    argv = ["--dataset", "folder", "--data-root", str(folder), *TINY_TRAIN, "--quiet", "--out", str(out)]
    assert train.main([*argv, "--init-from", str(spine_source), "--max-steps", "1", "--lr", "0", "--min-lr", "0"]) == 0
    source, result = load_file(spine_source / "model.safetensors"), load_file(out / "model.safetensors")
    new = train.landmark_dependent(load_model(out).config)
    assert new == {
        "hint_fusion.encode.0.weight", "gate.convs.0.weight", "head.aux_head.1.weight", "head.aux_head.1.bias",
        "head.classifier.weight", "head.classifier.bias",
    }  # fmt: skip
    learned = [k for k in result if k not in new and "running_" not in k and "num_batches" not in k]
    assert len(learned) > 100 and all(torch.equal(source[k].half(), result[k].half()) for k in learned)
    features = result["gate.convs.0.weight"].shape[1] - 8  # the gate's backbone channels, then one per landmark
    assert torch.equal(source["gate.convs.0.weight"][:, :features].half(), result["gate.convs.0.weight"][:, :features])
    card = (out / "README.md").read_text()
    assert "transfer from 68 other landmarks" in card and "held back" in card
    with pytest.raises(ValueError, match="differs from the one being trained in more than the landmarks"):
        train.main([*argv[:-1], str(tmp_path / "wide"), "--width", "16", "--init-from", str(spine_source)])


def run_cli(*argv, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "interactive_keypoints.cli", *argv], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_train_says_when_there_are_too_few_images(tmp_path):
    folder = write_set(tmp_path / "set", seeds=(1, 2))
    result = run_cli("train", "--dataset", "folder", "--data-root", str(folder), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "at least 3" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_killed_run_keeps_its_last_model_and_resumes(tmp_path, spine_source):
    """The module's Cancel, or Slicer closed: the process dies mid-run. The model it wrote
    stays usable and Resume continues from the checkpoint to the end of the budget."""
    folder = write_set(tmp_path / "set")
    job = training_job.start(
        folder, minutes=0.25, start_from=spine_source, threads=1, extra=[*TINY_TRAIN, "--budget-clock", "cpu"]
    )
    assert job.out == folder / "models" / "set-01"
    while job.running and not (trained_models(folder) and (job.out / "checkpoint.safetensors").is_file()):
        time.sleep(0.2)
    job.cancel()
    progress = job.progress()
    assert progress["status"] == "cancelled", progress
    assert trained_models(folder) == [job.out] and load_model(job.out).config.landmark_names == NAMES
    assert training_job.unfinished_run(folder).out == job.out
    resumed = training_job.wait(training_job.resume(folder), timeout_s=300)
    assert resumed["status"] == "finished", resumed
    summary = json.loads((job.out / "train_summary.json").read_text())
    assert summary["budget_clock"] == "cpu" and summary["cpu_s"] >= 0.25 * 60 * 0.9
    assert "resumed from epoch" in (job.out / "train.log").read_text()
    assert training_job.unfinished_run(folder) is None
    progress_file = json.loads((job.out / "progress.json").read_text())
    assert progress_file["status"] == "finished" and progress_file["fraction"] == 1.0


@pytest.mark.slow
def test_a_failed_run_says_why(tmp_path):
    folder = write_set(tmp_path / "set", seeds=(1, 2))
    job = training_job.wait(training_job.start(folder, minutes=0.1, start_from=None), timeout_s=120)
    assert job["status"] == "failed" and "at least 3" in job["message"]


def test_the_nearest_shipped_model_and_the_input_shape():
    ceph = training_job.nearest_model(CEPH, aspect=1.25)
    assert ceph.name == "isbi-ceph-19"  # the same landmarks: fine-tuned
    assert training_job.nearest_model(LandmarkTemplate(("a", "b")), aspect=2.0).name == "aasce-spine-68"
    assert training_job.nearest_model(LandmarkTemplate(("a", "b")), aspect=1.2).name == "isbi-ceph-19"
    assert training_job.input_size_for(2400 / 1935) == (320, 256)
    assert training_job.input_size_for(2.0) == (416, 192)
    # a model of the same landmarks is fine-tuned (or continued) at its own input size
    assert training_job.input_size(ceph, CEPH, aspect=2.0) == (320, 256)
    assert training_job.input_size(ceph, LandmarkTemplate(("a", "b")), aspect=2.0) == (416, 192)
