"""KeypointSession: the paper's inference rule, undo/redo, bad moves."""

import numpy as np
import pytest

from interactive_keypoints.imaging import ImageError, Radiograph
from interactive_keypoints.session import KeypointSession, OutsideImageError, SessionBusyError


@pytest.fixture
def session(tiny_model, phantom):
    return KeypointSession(tiny_model, Radiograph(phantom.image, phantom.spacing, True), optimized=False)


def test_predict_returns_points_in_original_pixels_with_confidence(session, phantom):
    prediction = session.predict()
    h, w = phantom.image.shape
    assert prediction.points.shape == (68, 2) and prediction.confidence.shape == (68,)
    assert not prediction.fixed.any()
    assert np.all((prediction.points >= -0.5) & (prediction.points <= [w - 0.5, h - 0.5]))
    assert np.all((prediction.confidence >= 0) & (prediction.confidence <= 1))


@pytest.mark.slow
def test_refine_fixes_the_moved_point_exactly_and_others_may_move(session):
    before = session.predict()
    target = (100.25, 200.75)
    after = session.refine({5: target})
    np.testing.assert_array_equal(after.points[5], target)
    assert after.fixed[5] and after.fixed.sum() == 1 and after.confidence[5] == 1.0
    others = np.delete(np.arange(68), 5)
    assert np.abs(after.points[others] - before.points[others]).max() > 0, "the model re-ran"


@pytest.mark.slow
def test_previously_fixed_points_stay_when_another_is_moved(session):
    session.refine({5: (100.0, 200.0)})
    after = session.refine({9: (120.0, 260.0), 11: (80.5, 300.5)})
    np.testing.assert_array_equal(after.points[5], (100.0, 200.0))
    np.testing.assert_array_equal(after.points[[9, 11]], [(120.0, 260.0), (80.5, 300.5)])
    assert set(np.flatnonzero(after.fixed)) == {5, 9, 11}


def test_undo_redo_restore_every_point(session):
    initial = session.predict()
    first = session.refine({5: (100.0, 200.0)})
    second = session.refine({9: (120.0, 260.0)})
    undone = session.undo()
    np.testing.assert_array_equal(undone.points, first.points)
    np.testing.assert_array_equal(undone.fixed, first.fixed)
    np.testing.assert_array_equal(session.undo().points, initial.points)
    assert not session.can_undo
    np.testing.assert_array_equal(session.undo().points, initial.points)  # no-op at the start
    np.testing.assert_array_equal(session.redo().points, first.points)
    np.testing.assert_array_equal(session.redo().points, second.points)
    assert not session.can_redo


@pytest.mark.slow
def test_a_preview_is_shown_but_is_no_step_and_leaves_the_next_refine_as_it_was(session):
    base = session.predict()
    dropped = session.refine({5: (100.0, 200.0)})
    session.undo()
    first = session.preview({5: (90.0, 190.0)})  # the path of a drag
    assert first.fixed[5] and session.prediction is first
    assert session.previewing and not session.can_undo and session.can_redo  # no step, the redo branch kept
    second = session.preview({5: (95.0, 195.0)})
    with pytest.raises(OutsideImageError):
        session.preview({5: (-50.0, 0.0)})
    assert session.prediction is second  # a refused move changes nothing
    np.testing.assert_array_equal(session.end_preview().points, base.points)
    session.preview({5: (95.0, 195.0)})
    again = session.refine({5: (100.0, 200.0)})  # the drop replaces the previews
    np.testing.assert_array_equal(again.points, dropped.points)
    np.testing.assert_array_equal(again.confidence, dropped.confidence)
    np.testing.assert_array_equal(session.undo().points, base.points)  # one step per correction
    assert not session.can_undo


@pytest.mark.slow
def test_new_refine_after_undo_drops_the_redo_branch(session):
    session.refine({5: (100.0, 200.0)})
    session.undo()
    session.refine({7: (90.0, 210.0)})
    assert not session.can_redo
    assert set(np.flatnonzero(session.prediction.fixed)) == {7}


@pytest.mark.slow
def test_unfix_and_reset(session):
    initial = session.predict()
    session.refine({5: (100.0, 200.0), 6: (150.0, 200.0)})
    after_unfix = session.unfix(5)
    assert set(np.flatnonzero(after_unfix.fixed)) == {6}
    reset = session.reset()
    np.testing.assert_array_equal(reset.points, initial.points)
    assert not reset.fixed.any()
    assert set(np.flatnonzero(session.undo().fixed)) == {6}, "reset is undoable"


def test_move_outside_the_image_is_refused_and_changes_nothing(session, phantom):
    session.refine({5: (100.0, 200.0)})
    before = session.prediction
    h, w = phantom.image.shape
    for bad in [(-3.0, 10.0), (10.0, h + 5.0), (w - 0.4, 10.0), (np.nan, 3.0)]:
        with pytest.raises(OutsideImageError, match="outside the"):
            session.refine({7: bad})
    with pytest.raises(IndexError, match="not in 0..67"):
        session.refine({68: (10.0, 10.0)})
    assert session.prediction is before
    # a batch with one bad move applies none of them
    with pytest.raises(OutsideImageError):
        session.refine({8: (10.0, 10.0), 9: (-100.0, 0.0)})
    assert session.prediction is before


def test_a_call_while_inference_runs_is_refused_not_merged(session):
    session.predict()
    with session._exclusive():  # what a second thread sees while the model runs
        with pytest.raises(SessionBusyError):
            session.refine({5: (100.0, 200.0)})
    assert not session.prediction.fixed.any()


@pytest.mark.slow
def test_all_channel_previous_prediction_is_selectable(tiny_model, phantom):
    session = KeypointSession(tiny_model, phantom.image, prev_mode="all", optimized=False)
    session.predict()
    after = session.refine({5: (100.0, 200.0)})
    np.testing.assert_array_equal(after.points[5], (100.0, 200.0))
    with pytest.raises(ValueError, match="prev_mode"):
        KeypointSession(tiny_model, phantom.image, prev_mode="some")


@pytest.mark.slow
def test_optimized_path_matches_fp32_on_the_same_weights(tiny_model, phantom):
    fp32 = KeypointSession(tiny_model, phantom.image, optimized=False)
    fast = KeypointSession(tiny_model, phantom.image, optimized=True)
    # an untrained net has flat heatmaps whose argmax is arbitrary: compare only where peaked
    a, b = fp32.predict(), fast.predict()
    assert a.points.shape == b.points.shape
    np.testing.assert_allclose(a.confidence, b.confidence, atol=0.05)


def test_bad_images_are_refused_with_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(ImageError, match="no contrast"):
        KeypointSession(tiny_model, np.full((64, 64), 7.0))
    bad = tmp_path / "scan.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="scan.png"):
        KeypointSession(tiny_model, bad)


@pytest.mark.slow
def test_shipped_phantom_model_finds_the_landmarks_of_an_unseen_phantom():
    from interactive_keypoints.model_folders import REPO_MODELS_DIR
    from interactive_keypoints.model_io import load_model
    from interactive_keypoints.phantom import make_spine_phantom

    folder = REPO_MODELS_DIR / "phantom-spine-68"
    if not (folder / "model.safetensors").is_file():
        pytest.skip("models/phantom-spine-68 is not shipped")
    sample = make_spine_phantom(987_654, height=512, width=256)  # a seed outside train/val
    session = KeypointSession(load_model(folder), Radiograph(sample.image, sample.spacing, True))
    before = session.predict()
    errors = np.linalg.norm(before.points - sample.points, axis=1)
    assert errors.mean() < 6.0, f"MRE {errors.mean():.1f} px"
    worst = int(np.argmax(errors))
    after = session.refine({worst: sample.points[worst]})
    np.testing.assert_array_equal(after.points[worst], sample.points[worst])
    assert np.linalg.norm(after.points - sample.points, axis=1).mean() < errors.mean()
