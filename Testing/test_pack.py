"""Training packs: what training reads from a pack equals what it reads from the files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, shared_dataset

from interactive_keypoints import cli, train
from interactive_keypoints.augment import flip_permutation, transform_points
from interactive_keypoints.data import DatasetSplit, KeypointTrainingDataset, training_splits
from interactive_keypoints.data.pack import PackError, load_pack, load_pack_splits, pack_dataset, read_manifest
from interactive_keypoints.model_io import load_model
from interactive_keypoints.recipe import DataSection

INPUT = (128, 64)
CACHE_SCALE = 1.25
# JPEG at quality 80 of the normalised cache, in units of the [-1, 1] range (2/255 per grey level)
# (measured in grey levels: mean 1.3, 99th percentile 5.3, max 34 at the ruler and text of an
# ISBI image; mean 2.2, 99th percentile 9, max 20 on the noisy small phantoms)
JPEG_MEAN_ERROR = 2 * 3 / 255
JPEG_P99_ERROR = 2 * 12 / 255
JPEG_MAX_ERROR = 2 * 64 / 255


@pytest.fixture(scope="module")
def phantom_pack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pack") / "phantom"
    pack_dataset("phantom", None, INPUT, folder, phantom_images=4)
    return folder


def first(data: DatasetSplit, n: int) -> DatasetSplit:
    return DatasetSplit(
        data.name, data.split, data.samples[:n], data.landmark_names, data.flip_pairs, data.flip_allowed
    )


def assert_pack_reads_like_the_files(packed: DatasetSplit, files: DatasetSplit, input_size, cache_scale=CACHE_SCALE):
    """Same samples, points, sizes and spacing; same input-frame points; the image within JPEG error."""
    assert packed.ids == files.ids and len(packed) > 0
    assert packed.landmark_names == files.landmark_names and packed.flip_pairs == files.flip_pairs
    assert packed.flip_allowed == files.flip_allowed
    from_pack = KeypointTrainingDataset(packed, input_size, augment=False)
    from_files = KeypointTrainingDataset(files, input_size, augment=False, cache_scale=cache_scale)
    for i, (a, b) in enumerate(zip(packed, files)):
        np.testing.assert_allclose(a.points, b.points, rtol=0, atol=0.01)
        assert a.image_size == b.image_size and a.spacing == b.spacing and a.spacing_known == b.spacing_known
        item_pack, item_files = from_pack[i], from_files[i]
        np.testing.assert_allclose(item_pack["points"].numpy(), item_files["points"].numpy(), rtol=0, atol=0.01)
        np.testing.assert_allclose(item_pack["orig_to_input"].numpy(), item_files["orig_to_input"].numpy(), atol=1e-9)
        cache_pack, cache_files = from_pack.cached_image(i), from_files.cached_image(i)
        assert cache_pack.shape == cache_files.shape
        error = (cache_pack - cache_files).abs()
        p99 = torch.quantile(error.flatten(), 0.99)
        assert error.mean() < JPEG_MEAN_ERROR and p99 < JPEG_P99_ERROR and error.max() < JPEG_MAX_ERROR, (
            a.id,
            error.mean(),
            p99,
            error.max(),
        )


@pytest.mark.slow
def test_phantom_pack_reads_like_the_generated_images(phantom_pack):
    train_files, val_files, _ = training_splits("phantom", phantom_images=4)
    for split, files in (("train", train_files), ("val", val_files)):
        assert_pack_reads_like_the_files(load_pack(phantom_pack, split), files, INPUT)


@pytest.mark.slow
def test_augmented_pack_items_keep_exact_coordinates(phantom_pack):
    packed = load_pack(phantom_pack, "train")
    data = KeypointTrainingDataset(packed, INPUT, augment=True, seed=3)
    perm = flip_permutation(68, packed.flip_pairs)
    for i in range(len(packed)):
        item = data[i]
        assert item["image"].shape == (1, *INPUT)
        expected = transform_points(packed[i].points, item["orig_to_input"].numpy())
        np.testing.assert_allclose(item["points"].numpy(), expected[perm] if item["flipped"] else expected, atol=1e-4)


def test_manifest_holds_the_geometry_and_loader_options(phantom_pack):
    manifest = read_manifest(phantom_pack)
    assert manifest["input_size"] == [128, 64] and manifest["cache_size"] == [160, 80]
    assert manifest["image_format"]["type"] == "JPEG" and manifest["image_format"]["quality"] == 80
    assert manifest["loader"] == {
        "split_seed": 0,
        "drop_disordered_labels": False,
        "phantom_images": 4,
        "options": {"num_images": 4, "seed": 0},
    }
    entry = manifest["splits"]["val"]["samples"][0]
    to_cache = np.array(entry["to_cache"])
    back = (np.array(entry["cache_points"]) - to_cache[:2, 2]) / np.diag(to_cache)[:2]
    np.testing.assert_allclose(back, entry["points"], atol=1e-4)  # the packed frame maps back to original pixels
    assert not list(phantom_pack.rglob("*.pkl")) and not list(phantom_pack.rglob("*.pt"))


def test_split_record_round_trips_with_skipped_labels(tmp_path):
    from interactive_keypoints.phantom import write_phantom_dataset

    root = tmp_path / "folder"
    write_phantom_dataset(root, n=5, height=128, width=64)
    (root / "phantom_00003.mrk.json").write_text("{}")  # an unreadable label: skipped and recorded
    pack_dataset("folder", root, INPUT, tmp_path / "pack")
    train_files, val_files, record_files = training_splits("folder", root)
    train_pack, val_pack, record_pack = load_pack_splits(tmp_path / "pack")
    assert json.loads(json.dumps(record_files)) == record_pack
    assert sum(len(v) for v in record_pack["skipped"].values()) == 1
    assert train_pack.skipped == train_files.skipped and val_pack.skipped == val_files.skipped
    assert train.used_ids(record_pack) == train.used_ids(record_files)
    assert_pack_reads_like_the_files(train_pack, train_files, INPUT)
    # the morphology terms are selected from the same training labels and sizes
    np.testing.assert_array_equal(train_pack.points_array(), train_files.points_array())
    np.testing.assert_array_equal(train_pack.image_sizes(), train_files.image_sizes())
    # train's own load_splits records the same from the files and from the pack
    files_data = DataSection(dataset="folder", data_root=root)
    pack_data = DataSection(pack=tmp_path / "pack")
    pack_record = train.load_splits(pack_data, INPUT)[2]
    assert json.loads(json.dumps(train.load_splits(files_data, INPUT)[2])) == pack_record
    assert pack_record["dataset"] == "folder" and pack_data == DataSection(pack=tmp_path / "pack")  # named, unchanged


@pytest.mark.slow
def test_train_from_a_pack_without_simpleitk(tmp_path, phantom_pack):
    out = tmp_path / "model"
    code = ("import sys; sys.modules['SimpleITK'] = None; sys.modules['scipy'] = None\n"
            "from interactive_keypoints import train\n"
            "sys.exit(train.main(sys.argv[1:]))")  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT / "InteractiveKeypoints"))
    result = subprocess.run(
        [sys.executable, "-c", code, "--pack", str(phantom_pack), "--width", "8", "--input", "128x64",
         "--batch-size", "2", "--quiet", "--max-steps", "2", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["best_val_mre_px"])
    model = load_model(out)
    assert model.config.name == "phantom-68" and model.config.input_size == (128, 64)
    assert json.loads((out / "split.json").read_text()) == read_manifest(phantom_pack)["split_record"]


@pytest.mark.slow
def test_simpleitk_is_not_imported_to_read_a_pack(phantom_pack):
    code = ("import sys; sys.modules['SimpleITK'] = None\n"
            "from interactive_keypoints.data.pack import load_pack\n"
            f"print(len(load_pack({str(phantom_pack)!r}, 'val')))")  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT / "InteractiveKeypoints"))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "4", result.stderr[-3000:]


# ------------------------------------------------------------------ bad packs and options


def copy_pack(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def edit_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_missing_or_unfinished_pack_is_named(tmp_path):
    with pytest.raises(PackError, match="does not exist"):
        load_pack(tmp_path / "nowhere", "train")
    (tmp_path / "half").mkdir()
    with pytest.raises(PackError, match="no manifest.json"):
        load_pack(tmp_path / "half", "train")
    (tmp_path / "half" / "manifest.json").write_text('{"format": "interactive-keypoints-pack", ')
    with pytest.raises(PackError, match="not valid JSON"):
        load_pack(tmp_path / "half", "train")


def test_corrupt_pack_names_the_sample_and_the_problem(tmp_path, phantom_pack):
    missing = copy_pack(phantom_pack, tmp_path / "missing")
    entry = read_manifest(missing)["splits"]["train"]["samples"][1]
    (missing / entry["image"]).unlink()
    with pytest.raises(PackError, match=f"train sample '{entry['id']}': its image {entry['image']} is missing"):
        load_pack(missing, "train")

    changed = copy_pack(phantom_pack, tmp_path / "changed")
    image = changed / entry["image"]
    image.write_bytes(image.read_bytes()[:200])  # truncated in transfer
    with pytest.raises(PackError, match="checksum differs"):
        load_pack(changed, "train")

    moved = copy_pack(phantom_pack, tmp_path / "moved")
    edit_manifest(moved, lambda m: m["splits"]["val"]["samples"][0]["cache_points"][0].__setitem__(0, 3.0))
    with pytest.raises(PackError, match="cache_points are not its points mapped"):
        load_pack(moved, "val")

    sized = copy_pack(phantom_pack, tmp_path / "sized")
    edit_manifest(sized, lambda m: m.__setitem__("cache_size", [150, 80]))
    with pytest.raises(PackError, match="is 160 x 80, the manifest says 150 x 80"):
        load_pack(sized, "val")

    keyless = copy_pack(phantom_pack, tmp_path / "keyless")
    edit_manifest(keyless, lambda m: m.pop("split_record"))
    with pytest.raises(PackError, match="lacks key.*split_record"):
        load_pack(keyless, "val")
    with pytest.raises(PackError, match="not 'test'"):
        load_pack(phantom_pack, "test")


def test_pack_options_must_match_training(tmp_path, phantom_pack):
    with pytest.raises(PackError, match="--split-seed 0, not 3"):
        load_pack_splits(phantom_pack, split_seed=3)
    with pytest.raises(PackError, match="without --drop-disordered-labels"):
        load_pack_splits(phantom_pack, drop_disordered=True)
    with pytest.raises(PackError, match="inputs up to 128x64, not 256x128"):
        load_pack_splits(phantom_pack, input_size=(256, 128))
    train_split, _, _ = load_pack_splits(phantom_pack, input_size=(64, 32))  # a smaller input is fine
    other = KeypointTrainingDataset(train_split, (64, 32), intensity={"mode": "minmax", "range": [0.0, 1.0]})
    with pytest.raises(ValueError, match="normalised as"):
        other[0]
    with pytest.raises(PackError, match="not empty"):
        pack_dataset("phantom", None, INPUT, phantom_pack, phantom_images=1)


def test_command_line_pack_and_its_errors(tmp_path, capsys):
    out = tmp_path / "cli-pack"
    assert cli.main(["pack", "--dataset", "phantom", "--phantom-images", "2", "--input", "64x32",
                     "--cache-scale", "1.5", "--jpeg-quality", "95", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    manifest = read_manifest(out)
    assert manifest["cache_size"] == [96, 48] and manifest["image_format"]["quality"] == 95
    assert "2 train (0 skipped), 2 val (0 skipped)" in capsys.readouterr().out
    assert cli.main(["train", "--pack", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), "--quiet"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one data source only
        cli.main(["train", "--pack", str(out), "--dataset", "phantom", "--out", str(tmp_path / "m")])


# ------------------------------------------------------------------ real datasets


@pytest.mark.slow
def test_real_aasce_pack_reads_like_the_files(tmp_path):
    root = shared_dataset("boostnet_labeldata")
    pack_dataset("aasce", root, (512, 256), tmp_path / "aasce", limit=2)
    train_files, val_files, record = training_splits("aasce", root)
    train_pack, val_pack, record_pack = load_pack_splits(tmp_path / "aasce", input_size=(512, 256))
    assert json.loads(json.dumps(record)) == record_pack
    assert " " in train_pack.ids[0]  # file names with spaces survive
    assert_pack_reads_like_the_files(train_pack, first(train_files, 2), (512, 256))
    assert_pack_reads_like_the_files(val_pack, first(val_files, 2), (512, 256))


@pytest.mark.slow
def test_real_isbi_pack_reads_like_the_files(tmp_path):
    root = shared_dataset("ISBI2015")
    pack_dataset("isbi", root, (640, 512), tmp_path / "isbi", limit=2)
    train_files, val_files, _ = training_splits("isbi", root)
    train_pack, val_pack, _ = load_pack_splits(tmp_path / "isbi")
    assert val_pack[0].spacing == (0.1, 0.1) and val_pack[0].spacing_known and not val_pack.flip_allowed
    assert_pack_reads_like_the_files(train_pack, first(train_files, 2), (640, 512))
    assert_pack_reads_like_the_files(val_pack, first(val_files, 2), (640, 512))
