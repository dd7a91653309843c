import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import SimpleITK as sitk
import torch

from interactive_keypoints import imaging
from interactive_keypoints.augment import flip_permutation, transform_points
from interactive_keypoints.data import (
    DatasetNotFoundError,
    KeypointTrainingDataset,
    aasce,
    get_dataset,
    get_split_ids,
    isbi,
    label_problem,
)
from interactive_keypoints.data.common import seeded_split

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared datasets not found at {SHARED_DATA}")


def write_grey(path, height, width, value=80):
    sitk.WriteImage(sitk.GetImageFromArray(np.full((height, width), value, np.uint8)), str(path))


# ----------------------------------------------------------------- validation / splits


def test_label_problems_are_named():
    good = np.array([[0.0, 0.0], [9.4, 19.4]])
    assert label_problem(good, 2, (20, 10)) is None
    assert "3 points, expected 2" in label_problem(np.zeros((3, 2)), 2, (20, 10))
    assert "non-finite" in label_problem(np.array([[np.nan, 1], [1, 1]]), 2, (20, 10))
    assert "outside the 10 x 20 image" in label_problem(np.array([[1.0, 1], [1, 19.6]]), 2, (20, 10))


def test_seeded_split_is_deterministic_and_disjoint():
    ids = [f"img {i}" for i in range(20)]
    a, b = seeded_split(ids, 5, seed=0), seeded_split(list(reversed(ids)), 5, seed=0)
    assert a == b  # depends on the set of ids, not their order
    assert len(a["val"]) == 5 and len(a["train"]) == 15
    assert not set(a["val"]) & set(a["train"])
    assert seeded_split(ids, 5, seed=1)["val"] != a["val"]


# --------------------------------------------------------------------- AASCE layout


@pytest.fixture
def fake_aasce(tmp_path):
    """The official AASCE layout with 6 tiny training images, names with spaces."""
    rng = np.random.default_rng(0)
    for folder in ("training",):
        (tmp_path / "data" / folder).mkdir(parents=True)
        (tmp_path / "labels" / folder).mkdir(parents=True)
        for i in range(6):
            name = f"sunhl-1th {i:02d} A AP.jpg"
            write_grey(tmp_path / "data" / folder / name, 120, 50)
            points = rng.uniform(2, 45, (68, 2)).astype(np.uint16)
            if i == 3:
                points[5] = (49, 130)  # below the image
            scipy.io.savemat(tmp_path / "labels" / folder / f"{name}.mat", {"p2": points})
    return tmp_path


def test_aasce_splits_and_skips(fake_aasce, caplog):
    splits = get_split_ids("aasce", fake_aasce, num_val=2, seed=0)
    assert set(splits) == {"train", "val"} and len(splits["val"]) == 2
    with caplog.at_level(logging.WARNING):
        parts = [get_dataset("aasce", fake_aasce, s, num_val=2) for s in ("train", "val")]
    skipped = parts[0].skipped + parts[1].skipped
    assert [i for i, _ in skipped] == ["sunhl-1th 03 A AP.jpg"]
    assert "outside" in skipped[0][1] and "sunhl-1th 03 A AP.jpg" in caplog.text
    assert sum(len(p) for p in parts) == 5
    sample = parts[0][0]
    assert sample.points.dtype == np.float64 and sample.image_size == (120, 50)
    assert not sample.spacing_known
    assert parts[0].landmark_names[0] == "T1-top-left" and parts[0].landmark_names[-1] == "L5-bottom-right"
    assert parts[0].flip_pairs[:2] == [(0, 1), (2, 3)] and parts[0].flip_allowed


def test_aasce_test_split_missing_then_present(fake_aasce):
    with pytest.raises(DatasetNotFoundError, match="test.*missing"):
        get_dataset("aasce", fake_aasce, "test")
    (fake_aasce / "data" / "test").mkdir()
    (fake_aasce / "labels" / "test").mkdir()
    write_grey(fake_aasce / "data" / "test" / "t 1.jpg", 100, 40)
    scipy.io.savemat(fake_aasce / "labels" / "test" / "t 1.jpg.mat", {"p2": np.full((68, 2), 10, np.uint16)})
    test = get_dataset("aasce", fake_aasce, "test")
    assert test.ids == ["t 1.jpg"]
    assert get_split_ids("aasce", fake_aasce, num_val=2)["test"] == ["t 1.jpg"]


def test_unreadable_label_is_reported_not_fatal(fake_aasce):
    name = "sunhl-1th 00 A AP.jpg"
    (fake_aasce / "labels" / "training" / f"{name}.mat").write_bytes(b"not a mat file")
    loaded = get_dataset("aasce", fake_aasce, "train", num_val=0)
    assert name in dict(loaded.skipped) and len(loaded) == 4


# ---------------------------------------------------------------------- ISBI layout


def test_isbi_annotation_ignores_extra_lines_and_names_bad_ones(tmp_path):
    lines = [f"{i},{2 * i}" for i in range(19)] + ["3", "1", ""]
    (tmp_path / "a.txt").write_text("\r\n".join(lines))
    points = isbi.read_annotation(tmp_path / "a.txt")
    assert points.shape == (19, 2) and points[18].tolist() == [18.0, 36.0]
    (tmp_path / "b.txt").write_text("\n".join(lines[:4] + ["12;5"] + lines[5:]))
    with pytest.raises(ValueError, match="line 5"):
        isbi.read_annotation(tmp_path / "b.txt")


def test_isbi_mean_of_doctors_and_missing_split(tmp_path):
    (tmp_path / "RawImage" / "TrainingData").mkdir(parents=True)
    for who, shift in (("senior", 0.0), ("junior", 2.0)):
        (tmp_path / "AnnotationsByMD" / f"400_{who}").mkdir(parents=True)
        (tmp_path / "AnnotationsByMD" / f"400_{who}" / "001.txt").write_text(
            "\n".join(f"{10 + shift},{20 + i}" for i in range(19))
        )
    write_grey(tmp_path / "RawImage" / "TrainingData" / "001.bmp", 60, 40)
    train = get_dataset("isbi", tmp_path, "train")
    assert train.ids == ["001"] and len(train.skipped) == 149  # 002-150 have no files
    np.testing.assert_allclose(train[0].points[:, 0], 11.0)
    assert train[0].spacing == (0.1, 0.1) and train[0].spacing_known
    assert not train.flip_allowed and train.landmark_names[0] == "sella"
    junior = get_dataset("isbi", tmp_path, "train", annotators=("junior",))  # one doctor's labels alone
    np.testing.assert_allclose(junior[0].points[:, 0], 12.0)
    with pytest.raises(DatasetNotFoundError, match="test2.*missing"):
        get_dataset("isbi", tmp_path, "test2")


# -------------------------------------------------------------------- generic folder


def test_folder_with_csv_and_markups(tmp_path):
    names = ["tip", "base", "left ear"]
    (tmp_path / "landmarks.json").write_text(json.dumps({"names": names, "flip_pairs": []}))
    for i in range(4):
        write_grey(tmp_path / f"img{i}.png", 30, 20)
    for i in (0, 1):
        rows = ["name,x_px,y_px"] + [f"{n},{i + 1},{k + 2}" for k, n in reversed(list(enumerate(names)))]
        (tmp_path / f"img{i}.csv").write_text("\n".join(rows))
    # Slicer markups in RAS: a PNG loads at origin 0, spacing 1, so pixel (x, y) = RAS (-x, -y)
    control = [{"label": n, "position": [-(5.0 + k), -7.0, 0.0]} for k, n in enumerate(names)]
    (tmp_path / "img2.mrk.json").write_text(
        json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": control}]})
    )
    (tmp_path / "img3.csv").write_text("name,x_px,y_px\ntip,1,1\nbase,2,2\n")  # lacks "left ear"
    everything = get_dataset("folder", tmp_path, "all")
    assert everything.ids == ["img0", "img1", "img2"]
    assert everything.skipped[0][0] == "img3" and "left ear" in everything.skipped[0][1]
    np.testing.assert_allclose(everything[1].points, [[2, 2], [2, 3], [2, 4]])  # matched by name
    np.testing.assert_allclose(everything[2].points, [[5, 7], [6, 7], [7, 7]])
    assert not everything.flip_allowed  # no pairs and no explicit permission
    splits = get_split_ids("folder", tmp_path, val_fraction=0.25)
    assert len(splits["val"]) == 1 and len(splits["train"]) == 3


def test_folder_reads_written_phantom_folder(tmp_path):
    from interactive_keypoints.phantom import make_spine_phantom, write_phantom_dataset

    write_phantom_dataset(tmp_path, n=2, seed=5, height=128, width=64)
    loaded = get_dataset("folder", tmp_path, "all")
    assert loaded.ids == ["phantom_00005", "phantom_00006"] and not loaded.skipped
    np.testing.assert_allclose(loaded[1].points, make_spine_phantom(6, 128, 64).points, atol=1e-3)
    assert loaded.flip_allowed and loaded.flip_pairs[0] == (0, 1)  # from landmarks.json


def test_folder_without_template_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="landmarks.json"):
        get_dataset("folder", tmp_path, "train")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("mnist", "/nowhere")


# ------------------------------------------------------------------ training dataset


@pytest.fixture(scope="module")
def phantoms():
    return get_dataset("phantom", split="train", num_images=3, height=256, width=128)


def test_phantom_splits_do_not_overlap(phantoms):
    val = get_dataset("phantom", split="val", num_images=3, height=256, width=128)
    assert not set(val.ids) & set(phantoms.ids)
    assert phantoms.num_keypoints == 68 and phantoms[0].image_size == (256, 128)


@pytest.mark.slow
def test_training_item_without_augmentation_equals_inference_preprocessing(phantoms):
    data = KeypointTrainingDataset(phantoms, (128, 64), augment=False)
    item = data[1]
    sample = phantoms[1]
    expected = imaging.preprocess(imaging.load_radiograph(sample.image), (128, 64), data.intensity)
    torch.testing.assert_close(item["image"], expected)
    np.testing.assert_allclose(
        item["points"].numpy(), imaging.to_input(sample.points, (256, 128), (128, 64)), atol=1e-4
    )
    assert item["scale"].tolist() == [0.5, 0.5] and item["visible"].all()
    assert item["id"] == sample.id


def test_augmented_items_keep_exact_coordinates(phantoms):
    data = KeypointTrainingDataset(phantoms, (128, 64), augment=True, seed=3)
    perm = flip_permutation(68, phantoms.flip_pairs)
    flips = 0
    for epoch in range(6):
        item = data.item(0, epoch)
        expected = transform_points(phantoms[0].points, item["orig_to_input"].numpy())
        if item["flipped"]:
            flips += 1
            expected = expected[perm]
            # AASCE order: the top-left corner channel stays left of top-right after a flip
            assert (item["points"][0::4, 0] < item["points"][1::4, 0]).all()
        np.testing.assert_allclose(item["points"].numpy(), expected, atol=1e-4)
        assert item["image"].shape == (1, 128, 64) and item["image"].dtype == torch.float32
    assert flips > 0
    assert len(data._cache) == 1  # decoded once
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 128, 64) and batch["points"].shape == (2, 68, 2)


def test_augmentation_depends_on_seed_epoch_and_index_only(phantoms):
    data = KeypointTrainingDataset(phantoms, (128, 64), augment=True, seed=3)
    first = data.item(1, epoch=4)
    data.item(0, epoch=2)  # whatever was drawn in between
    torch.testing.assert_close(data.item(1, epoch=4)["image"], first["image"])
    assert not torch.equal(data.item(1, epoch=5)["image"], first["image"])
    data.epoch = 4
    torch.testing.assert_close(data[1]["points"], first["points"])


def ordered_spine_label() -> np.ndarray:
    """A plausible (68, 2) AASCE label inside a 120 x 50 image: 17 tilted vertebrae, top to bottom."""
    corners = []
    for v in range(17):
        top, bottom, left = 4 + 6 * v, 8 + 6 * v, 5 + v
        corners += [(left, top + 1), (left + 25, top), (left, bottom + 1), (left + 25, bottom)]
    return np.array(corners, dtype=np.float64)


def test_vertebra_order_problem_names_the_known_label_errors():
    points = ordered_spine_label()
    assert aasce.vertebra_order_problem(points) is None
    swapped = points.copy().reshape(17, 4, 2)
    swapped[4, [0, 1, 2, 3]] = swapped[4, [2, 3, 0, 1]]  # T5's endplates swapped
    assert aasce.vertebra_order_problem(swapped.reshape(68, 2)) == "T5: top corners not above its bottom corners"
    mirrored = points.copy().reshape(17, 4, 2)
    mirrored[16, [0, 1]] = mirrored[16, [1, 0]]
    assert "L5: left corners" in aasce.vertebra_order_problem(mirrored.reshape(68, 2))
    # the last vertebra labelled above the first, as in one real image
    rolled = np.roll(points.reshape(17, 4, 2), 1, axis=0).reshape(68, 2)
    assert aasce.vertebra_order_problem(rolled) == "T2 is not below T1 (vertebrae out of order)"


def test_disordered_labels_are_kept_with_a_warning_or_dropped_on_request(fake_aasce, caplog):
    labels = fake_aasce / "labels" / "training"
    for i in (0, 1, 2, 4, 5):  # plausible labels everywhere but image 3 (outside) and image 5
        points = ordered_spine_label()
        if i == 5:
            points = points.reshape(17, 4, 2)[::-1].reshape(68, 2)  # L5 first
        scipy.io.savemat(labels / f"sunhl-1th {i:02d} A AP.jpg.mat", {"p2": points})
    with caplog.at_level(logging.WARNING):
        kept = get_dataset("aasce", fake_aasce, "train", num_val=0)
    assert len(kept) == 5 and "keeping 1 label(s) with vertebrae out of order" in caplog.text
    dropped = get_dataset("aasce", fake_aasce, "train", num_val=0, drop_disordered=True)
    assert len(dropped) == 4
    assert [i for i, _ in dropped.skipped] == ["sunhl-1th 03 A AP.jpg", "sunhl-1th 05 A AP.jpg"]
    assert "out of order" in dict(dropped.skipped)["sunhl-1th 05 A AP.jpg"]


# ------------------------------------------------------------------ real datasets


@needs_data
def test_real_aasce_labels_and_split():
    root = SHARED_DATA / "boostnet_labeldata"
    splits = get_split_ids("aasce", root)
    assert len(splits["val"]) == 128 and len(splits["train"]) == 481 - 128
    assert splits == get_split_ids("aasce", root, seed=0)
    assert any(" " in name for name in splits["train"])
    labels = [aasce.read_label(root / "labels" / "training" / f"{n}.mat") for n in splits["val"][:8]]
    for points in labels:
        assert points.shape == (68, 2)
        corners = points.reshape(17, 4, 2)
        # verify the flip pairing from the labels: corner 0 left of 1, corner 2 left of 3
        assert (corners[:, 0, 0] < corners[:, 1, 0]).mean() > 0.9
        assert (corners[:, 2, 0] < corners[:, 3, 0]).mean() > 0.9
        assert (corners[:, 0, 1] < corners[:, 2, 1]).mean() > 0.9  # top above bottom


@needs_data
def test_real_aasce_disordered_labels_are_found():
    root = SHARED_DATA / "boostnet_labeldata"
    val = get_dataset("aasce", root, "val", drop_disordered=True)
    reasons = dict(val.skipped)
    # its L5 is labelled above T1: the worst validation image of the shipped model
    assert "vertebrae out of order" in reasons["sunhl-1th-09-Jan-2017-212 A AP.jpg"]
    assert 0 < len(reasons) <= 10 and len(val) == 128 - len(reasons)


@needs_data
def test_real_aasce_item_decodes():
    val = get_dataset("aasce", SHARED_DATA / "boostnet_labeldata", "val")
    assert len(val) + len(val.skipped) == 128
    few = type(val)(val.name, val.split, val.samples[:1], val.landmark_names, val.flip_pairs)
    item = KeypointTrainingDataset(few, (512, 256), augment=False)[0]
    assert item["image"].shape == (1, 512, 256)
    assert -1.0 <= item["image"].min() < item["image"].max() <= 1.0


@needs_data
def test_real_isbi_ground_truth_is_mean_of_doctors():
    root = SHARED_DATA / "ISBI2015"
    senior = isbi.read_annotation(root / "AnnotationsByMD" / "400_senior" / "001.txt")
    junior = isbi.read_annotation(root / "AnnotationsByMD" / "400_junior" / "001.txt")
    train = isbi.load(root, "train")
    assert len(train) == 150 and train.ids[0] == "001"
    np.testing.assert_allclose(train[0].points, (senior + junior) / 2)
    assert train[0].image_size == (2400, 1935)
    assert get_split_ids("isbi")["val"] == get_split_ids("isbi")["test1"]
