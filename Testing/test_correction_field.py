"""The correction field: unfixed points follow the residual at the clicks, near ones most."""

import numpy as np
import pytest

from interactive_keypoints.correction_field import apply_correction_field, correction_field, landmark_extent
from interactive_keypoints.model_io import build_model
from interactive_keypoints.session import KeypointSession
from interactive_keypoints.tiny_model import tiny_config


def column_of_points(n=17, spacing=60.0):
    """A vertical chain of landmarks, like vertebral centres."""
    return np.stack([np.full(n, 200.0), 100.0 + spacing * np.arange(n)], axis=1)


def test_no_clicks_or_zero_length_move_nothing():
    points = column_of_points()
    assert not correction_field(points, [], np.zeros((0, 2)), 100.0, 0.3).any()
    assert not correction_field(points, [3], [[10.0, 0.0]], 0.0, 0.3).any()
    np.testing.assert_array_equal(apply_correction_field(points, {}, 0.1, 0.3), points)
    np.testing.assert_array_equal(apply_correction_field(points, {3: (230.0, 280.0)}, 0.0, 0.3), points)


def test_neighbours_follow_a_click_and_far_points_stay():
    points = column_of_points()
    user = points[8] + [30.0, 0.0]  # the user moves landmark 8 right by 30 px
    moved = apply_correction_field(points, {8: user}, length=0.1, noise=0.01)  # length 0.1 * 960 px = 96 px
    shift = moved[:, 0] - points[:, 0]
    assert shift[8] == 0  # the fixed point is the session's to place
    assert 20 < shift[7] < 30 and 20 < shift[9] < 30  # the next landmarks (60 px away) follow most of the way
    assert shift[6] < shift[7] and shift[10] < shift[9]  # ... further ones less
    assert abs(shift[0]) < 0.1 and abs(shift[16]) < 0.1  # far away: nothing
    np.testing.assert_allclose(moved[:, 1], points[:, 1])  # a sideways correction moves points sideways only


def test_noise_keeps_two_close_clicks_from_extrapolating():
    points = column_of_points()
    # two adjacent clicks that disagree: exact interpolation overshoots between and beyond them
    fixed = {8: points[8] + [30.0, 0.0], 9: points[9] - [30.0, 0.0]}
    sharp = apply_correction_field(points, fixed, length=0.2, noise=1e-6)
    smooth = apply_correction_field(points, fixed, length=0.2, noise=0.3)
    assert np.abs(smooth - points).max() < np.abs(sharp - points).max()
    assert np.abs(smooth - points).max() <= 30.0


def test_extent_is_the_larger_side_of_the_bounding_box():
    assert landmark_extent(column_of_points()) == pytest.approx(960.0)


def test_the_session_applies_the_models_field_and_keeps_fixed_points_exact():
    rng = np.random.default_rng(0)
    image = rng.random((256, 128)).astype(np.float32)
    plain = build_model(tiny_config())
    with_field = build_model(tiny_config(correction_length=0.1))
    with_field.network.load_state_dict(plain.network.state_dict())
    sessions = [KeypointSession(m, image, spacing=(1.0, 1.0)) for m in (plain, with_field)]
    starts = [s.predict().points for s in sessions]
    np.testing.assert_allclose(starts[0], starts[1])  # no click, no field
    target = np.array([40.0, 200.0])  # inside the 128 x 256 image, wherever the untrained network put L11
    assert np.linalg.norm(target - starts[0][10]) > 5
    refined = [s.refine({10: target}).points for s in sessions]
    for points in refined:
        np.testing.assert_allclose(points[10], target)
    others = np.arange(len(refined[0])) != 10
    assert np.abs(refined[1][others] - refined[0][others]).max() > 0.5  # the field moved unfixed points
    # an explicit 0 turns the model's field off: the network alone, as the paper
    off = KeypointSession(with_field, image, spacing=(1.0, 1.0), correction_length=0.0)
    off.predict()
    np.testing.assert_allclose(off.refine({10: target}).points, refined[0], atol=1e-6)
    # undo restores the points from before the click, field and all
    np.testing.assert_allclose(sessions[1].undo().points, starts[1])


def test_a_correction_beyond_the_propagation_limit_stays_but_moves_no_other_point():
    """A drag across much of the landmarks' extent (a slip, or a wrong label in a benchmark) is
    kept where the user put it, but the network, the field and the decoder are not told of it."""
    rng = np.random.default_rng(0)
    image = rng.random((256, 128)).astype(np.float32)
    limited = build_model(tiny_config(correction_length=0.1, propagation_limit=0.3))
    unlimited = build_model(tiny_config(correction_length=0.1))
    unlimited.network.load_state_dict(limited.network.state_dict())
    session = KeypointSession(limited, image, spacing=(1.0, 1.0))
    start = session.predict()
    first = session.network_points
    corners = np.array([[2.0, 2.0], [125.0, 2.0], [2.0, 253.0], [125.0, 253.0]])
    far = corners[np.argmax(np.linalg.norm(corners - first[10], axis=1))]
    assert np.linalg.norm(far - first[10]) > 0.3 * landmark_extent(first)  # beyond the limit

    after_far = session.refine({10: far})
    np.testing.assert_array_equal(after_far.points[10], far)
    assert after_far.fixed[10] and after_far.unpropagated[10] and after_far.unpropagated.sum() == 1
    others = np.arange(68) != 10
    np.testing.assert_array_equal(after_far.points[others], start.points[others])  # nothing followed

    # a small correction elsewhere propagates as ever; the far point stays where it was put
    near = session.predict().points[20] + [0.0, 6.0]
    after_near = session.refine({20: near})
    assert not after_near.unpropagated[20] and after_near.unpropagated[10]
    np.testing.assert_array_equal(after_near.points[[10, 20]], [far, near])
    moved = (np.arange(68) != 10) & (np.arange(68) != 20)
    assert np.abs(after_near.points[moved] - after_far.points[moved]).max() > 0.1
    np.testing.assert_array_equal(session.undo().points, after_far.points)

    # without a limit (the default) the same far drag moves the others
    plain = KeypointSession(unlimited, image, spacing=(1.0, 1.0))
    plain.predict()
    followed = plain.refine({10: far})
    assert not followed.unpropagated.any()
    assert np.abs(followed.points[others] - start.points[others]).max() > 0.5


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="correction_length"):
        tiny_config(correction_length=-0.1)
    with pytest.raises(ValueError, match="correction_noise"):
        tiny_config(correction_noise=0.0)
    with pytest.raises(ValueError, match="correction_length"):
        KeypointSession(build_model(tiny_config()), np.zeros((64, 32), np.float32), correction_length=-1)
    with pytest.raises(ValueError, match="propagation_limit"):
        tiny_config(propagation_limit=-0.5)


def test_evaluate_overrides_the_field_without_touching_the_model_folder(tmp_path):
    import json

    from conftest import REPO_ROOT

    from interactive_keypoints import cli

    model = REPO_ROOT / "models" / "phantom-spine-68"
    on_disk = (model / "model.json").read_text()

    def run(out, *field):
        common = ["evaluate", "--model", str(model), "--dataset", "phantom", "--phantom-images", "2", "--limit", "1"]
        args = [*common, "--max-clicks", "2", "--targets", "5", "--threads", "1", "--quiet", "--out", str(out)]
        assert cli.main([*args, *field]) == 0
        return json.loads((out / "metrics.json").read_text())

    shipped = run(tmp_path / "shipped")
    alone = run(tmp_path / "alone", "--correction-length", "0")
    other = run(tmp_path / "other", "--correction-length", "0.2", "--correction-noise", "0.05")
    limited = run(tmp_path / "limited", "--propagation-limit", "0.25")
    assert shipped["correction_length"] > 0 and alone["correction_length"] == 0
    assert shipped["propagation_limit"] == 0 and limited["propagation_limit"] == 0.25
    assert (other["correction_length"], other["correction_noise"]) == (0.2, 0.05)
    assert alone["MRE_by_clicks"]["model"][2] != shipped["MRE_by_clicks"]["model"][2]  # the field moved points
    assert alone["MRE_by_clicks"]["model"][0] == shipped["MRE_by_clicks"]["model"][0]  # before any click: the same
    assert (model / "model.json").read_text() == on_disk
