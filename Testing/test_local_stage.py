"""The full-resolution local stage: patch geometry, model folders, the session's pipeline, training."""

import argparse
import json

import numpy as np
import pytest
import torch

from interactive_keypoints.config import ModelFormatError
from interactive_keypoints.imaging import Radiograph
from interactive_keypoints.local_stage import (
    LocalStage,
    LocalStageConfig,
    LocalStageNet,
    PatchSource,
    add_local_stage,
    cut_patches,
    from_patch,
    patch_matrices,
    to_patch,
)
from interactive_keypoints.model_io import load_model, save_model
from interactive_keypoints.session import KeypointSession
from interactive_keypoints.tiny_model import tiny_model, with_tiny_local_stage

INTENSITY = {"mode": "minmax", "range": [-1.0, 1.0]}


def dot_image(xy, size=(300, 200)):
    """A dark image with one bright Gaussian dot at ``xy`` (x, y) and a bright bar for orientation."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    image = np.exp(-((xs - xy[0]) ** 2 + (ys - xy[1]) ** 2) / (2 * 1.5**2)).astype(np.float32)
    image[5:8, 5:60] += 0.5
    return image


def peak_xy(patch: torch.Tensor) -> np.ndarray:
    """Intensity-weighted centre of the brightest 3 x 3 of a (P, P) patch: (x, y)."""
    p = patch.numpy()
    row, col = np.unravel_index(p.argmax(), p.shape)
    window = p[row - 1 : row + 2, col - 1 : col + 2]
    window = window - window.min()
    ys, xs = np.mgrid[row - 1 : row + 2, col - 1 : col + 2]
    return np.array([(window * xs).sum(), (window * ys).sum()]) / window.sum()


@pytest.mark.parametrize("rotation, zoom", [(0.0, 1.0), (12.0, 1.0), (-9.0, 1.15), (0.0, 0.9)])
def test_a_point_lands_where_to_patch_says_in_both_channels(rotation, zoom):
    dot = np.array([103.3, 141.6])
    source = PatchSource.from_image(dot_image(dot), INTENSITY)
    start = dot + [4.2, -3.1]  # the patch is centred on an estimate near the dot
    matrices = patch_matrices(start[None], 32, 0.75, np.array([rotation]), np.array([zoom]))
    patches = cut_patches(source, matrices, 32, context=2.0)
    expected = to_patch(dot[None], matrices)[0]
    np.testing.assert_allclose(peak_xy(patches[0, 0]), expected, atol=0.35)
    # the context channel: the same centre, pixels twice as large
    np.testing.assert_allclose(peak_xy(patches[0, 1]), (expected - 15.5) / 2 + 15.5, atol=0.35)
    np.testing.assert_allclose(from_patch(to_patch(dot[None], matrices), matrices)[0], dot, atol=1e-9)


def test_a_patch_at_the_border_is_padded_not_shifted():
    image = dot_image((2.0, 3.0))
    source = PatchSource.from_image(image, INTENSITY)
    matrices = patch_matrices(np.array([[0.0, 0.0]]), 16, 1.0)
    patch = cut_patches(source, matrices, 16, context=1.0)[0, 0]
    # the patch's middle is pixel (0, 0): the dot stays at its true offset from it
    np.testing.assert_allclose(peak_xy(patch), to_patch(np.array([[2.0, 3.0]]), matrices)[0], atol=0.35)
    # outside the image: the normalised image's darkest value, -1
    np.testing.assert_allclose(patch[:6, :6].numpy(), -1.0, atol=1e-6)


def test_a_model_folder_with_a_stage_loads_and_one_without_loads_as_before(tmp_path):
    plain = tiny_model()
    save_model(tmp_path / "plain", plain)
    assert "local_stage" not in json.loads((tmp_path / "plain" / "model.json").read_text())
    assert load_model(tmp_path / "plain").local_stage is None

    staged = with_tiny_local_stage(tiny_model())
    save_model(tmp_path / "staged", staged)
    loaded = load_model(tmp_path / "staged")
    assert loaded.local_stage_config == staged.local_stage_config
    for name, tensor in staged.local_stage.state_dict().items():
        torch.testing.assert_close(loaded.local_stage.state_dict()[name], tensor, atol=1e-2, rtol=1e-2)  # fp16 file


def test_a_stage_is_added_to_an_existing_folder_and_checked_on_load(tmp_path):
    folder = tmp_path / "model"
    save_model(folder, tiny_model())
    stage = LocalStageNet(LocalStageConfig(68, patch_size=16, channels=(4, 8)))
    add_local_stage(folder, stage)
    assert load_model(folder).local_stage_config.channels == (4, 8)

    (folder / "local_stage.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="local_stage.safetensors is missing"):
        load_model(folder)
    add_local_stage(folder, LocalStageNet(LocalStageConfig(68, patch_size=16, channels=(4, 8))))
    config = json.loads((folder / "model.json").read_text())
    config["local_stage"]["channels"] = [4, 16]  # weights of another width
    (folder / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="does not match model.json's local_stage"):
        load_model(folder)
    config["local_stage"]["identity"] = "both"
    (folder / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="identity must be one of"):
        load_model(folder)
    config["local_stage"] = dict(config["local_stage"], identity="input", num_keypoints=19)
    (folder / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="local stage has 19 landmarks, the model 68"):
        load_model(folder)


@pytest.fixture
def staged_session(phantom):
    model = with_tiny_local_stage(tiny_model())
    return KeypointSession(model, Radiograph(phantom.image, phantom.spacing, True), optimized=False)


@pytest.mark.slow
def test_the_session_runs_the_stage_after_the_first_stage_and_never_moves_fixed_points(staged_session, phantom):
    model = staged_session.model
    first_stage_only = KeypointSession(
        model, Radiograph(phantom.image, phantom.spacing, True), optimized=False, local_stage=False
    )
    coarse = first_stage_only.predict().points
    refined = staged_session.predict().points
    assert np.abs(refined - coarse).max() > 0.5, "the stage moved the points"
    stage = staged_session.local_stage
    np.testing.assert_allclose(refined, stage.refine(staged_session._patch_source, coarse, np.ones(68, bool)))

    moved = staged_session.refine({5: (100.25, 200.75), 9: (90.0, 260.0)})
    np.testing.assert_array_equal(moved.points[[5, 9]], [(100.25, 200.75), (90.0, 260.0)])
    confirmed = staged_session.confirm(20)
    np.testing.assert_array_equal(confirmed.points[20], moved.points[20])
    np.testing.assert_array_equal(confirmed.points[[5, 9]], [(100.25, 200.75), (90.0, 260.0)])


@pytest.mark.slow
def test_undo_and_redo_restore_the_exact_refined_points(staged_session):
    initial = staged_session.predict()
    first = staged_session.refine({5: (100.0, 200.0)})
    second = staged_session.refine({30: (120.0, 300.0)})
    np.testing.assert_array_equal(staged_session.undo().points, first.points)
    np.testing.assert_array_equal(staged_session.undo().points, initial.points)
    np.testing.assert_array_equal(staged_session.redo().points, first.points)
    np.testing.assert_array_equal(staged_session.redo().points, second.points)


def test_bad_stage_configs_name_the_problem():
    with pytest.raises(ModelFormatError, match="patch_size must be a multiple of 8"):
        LocalStageConfig(19, patch_size=30)
    with pytest.raises(ModelFormatError, match="unknown keys"):
        LocalStageConfig.from_dict({"num_keypoints": 19, "patch": 64})
    with pytest.raises(ModelFormatError, match="head must be one of"):
        LocalStageConfig(19, head="offset")


# T1's and L5's corners: six landmarks keep the test's training to a hundred small steps
PHANTOM_LANDMARKS = [0, 1, 2, 3, 66, 67]


def phantom_stage_images(num_images: int, seed: int, error_px: float):
    """Phantom radiographs as the stage trainer sees them (six of their landmarks), with a first
    stage that errs by ~error_px."""
    from interactive_keypoints.data import get_dataset
    from interactive_keypoints.data.common import DatasetSplit, KeypointSample
    from interactive_keypoints.train_local import StageImages

    phantoms = get_dataset("phantom", split="train", num_images=num_images, seed=seed)
    samples = [
        KeypointSample(s.id, s.points[PHANTOM_LANDMARKS], image=s.image, spacing=s.spacing) for s in phantoms.samples
    ]
    names = [phantoms.landmark_names[i] for i in PHANTOM_LANDMARKS]
    split = DatasetSplit("phantom", "train", samples, names, flip_allowed=False)
    sources = [PatchSource.from_image(s.image, INTENSITY) for s in samples]
    truth = split.points_array()
    rng = np.random.default_rng(seed)
    return StageImages(split, sources, truth, truth + rng.normal(0, error_px / 1.25, truth.shape))


@pytest.mark.slow
def test_a_few_training_steps_move_unfixed_points_towards_the_truth_on_phantoms():
    """Trained on phantoms whose first stage errs by ~8 px, the stage brings held-out points closer
    and returns fixed ones unchanged; the untrained stage does not bring them closer."""
    from monai.transforms import Compose

    from interactive_keypoints.augment import intensity_augmentations
    from interactive_keypoints.train_local import augment_intensity, patch_loss, training_patches

    torch.manual_seed(0)
    k = len(PHANTOM_LANDMARKS)
    config = LocalStageConfig(k, patch_size=32, pixels_per_height=256.0, channels=(8, 16, 32), identity="input")
    args = argparse.Namespace(images_per_step=4, patches_per_image=8, offset_scale=(0.75, 1.75))
    train = phantom_stage_images(8, seed=0, error_px=8.0)
    held_out = phantom_stage_images(4, seed=5, error_px=8.0)
    network = LocalStageNet(config)
    untrained = LocalStage(config, LocalStageNet(config))
    movable = np.array([True, True, False, True, True, True])  # one fixed point is returned exactly

    def error_after(stage) -> float:
        errors = []
        for source, truth, start in zip(held_out.sources, held_out.truth, held_out.first_stage):
            refined = stage.refine(source, start, movable)
            np.testing.assert_array_equal(refined[~movable], start[~movable])
            errors.append(np.linalg.norm(refined[movable] - truth[movable], axis=1))
        return float(np.mean(errors))

    before = float(np.linalg.norm((held_out.first_stage - held_out.truth)[:, movable], axis=-1).mean())
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    pipeline = Compose(intensity_augmentations())
    for step in range(120):
        rng = np.random.default_rng([0, step])
        patches, landmarks, targets = training_patches(train, config, args, rng)
        loss = patch_loss(network(augment_intensity(patches, pipeline, step), landmarks), targets, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = error_after(LocalStage(config, network))
    assert trained < 0.6 * before, f"held-out error {before:.2f} -> {trained:.2f} px"
    assert error_after(untrained) > before, "an untrained stage does not help"


@pytest.mark.slow
def test_evaluate_reports_the_curves_with_and_without_the_stage(tmp_path):
    from interactive_keypoints import cli

    folder = tmp_path / "model"
    save_model(folder, with_tiny_local_stage(tiny_model()))

    def run(out, choice):
        args = ["evaluate", "--model", str(folder), "--dataset", "phantom", "--phantom-images", "2", "--limit", "1",
                "--max-clicks", "2", "--targets", "5", "--threads", "1", "--quiet", "--local-stage", choice,
                "--out", str(out)]  # fmt: skip
        assert cli.main(args) == 0
        return json.loads((out / "metrics.json").read_text())

    both, off = run(tmp_path / "both", "both"), run(tmp_path / "off", "off")
    assert both["local_stage_used"] and not off["local_stage_used"]
    curves = both["local_stage"]
    assert curves["without"]["MRE_by_clicks"] == off["MRE_by_clicks"]["model"]
    assert curves["with"]["MRE_by_clicks"] == both["MRE_by_clicks"]["model"]
    assert curves["with"]["MRE_by_clicks"][0] != curves["without"]["MRE_by_clicks"][0]


@pytest.mark.slow
def test_train_local_writes_a_model_folder_with_its_stage_and_resumes(tmp_path):
    from interactive_keypoints import cli

    first_stage = tmp_path / "first-stage"
    save_model(first_stage, tiny_model())
    out = tmp_path / "staged"
    common = ["train-local", "--model", str(first_stage), "--dataset", "phantom", "--phantom-images", "2",
              "--patch-size", "16", "--pixels-per-height", "256", "--channels", "4", "8", "--identity", "input",
              "--images-per-step", "2", "--patches-per-image", "4", "--steps-per-epoch", "2", "--threads", "1",
              "--quiet", "--out", str(out)]  # fmt: skip
    assert cli.main([*common, "--epochs", "1"]) == 0
    staged = load_model(out)
    assert staged.local_stage_config.identity == "input" and staged.local_stage_config.trained["steps"] == 2
    errors = json.loads((out / "first_stage_errors.json").read_text())
    assert errors["train"]["images"] == 2 and errors["val"]["images"] == 2 and errors["val_over_train_mre"] > 0
    assert cli.main([*common, "--epochs", "2", "--resume"]) == 0
    log = (out / "local_stage_log.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in log[1:]] == [["0", "2"], ["1", "4"]]  # the second run went on from step 2
