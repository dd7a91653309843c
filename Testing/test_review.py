"""Guided review (issue #17): check-next scores, confirm, the guided simulated user, click noise."""

import json

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from interactive_keypoints import evaluate, review
from interactive_keypoints.imaging import Radiograph
from interactive_keypoints.model_io import load_model
from interactive_keypoints.morphology import MorphologySelection, select_morphology, with_review_stats
from interactive_keypoints.phantom import make_spine_phantom, spine_corners
from interactive_keypoints.session import KeypointSession, Prediction

PHANTOM_MODEL = REPO_ROOT / "models" / "phantom-spine-68"
HEIGHT, WIDTH = 512, 256


@pytest.fixture(scope="module")
def phantom_selection():
    """The morphology of 40 phantom label sets (labels only, no rendering)."""
    labels = np.stack([spine_corners(np.random.default_rng(100 + i), HEIGHT, WIDTH).reshape(-1, 2) for i in range(40)])
    return select_morphology(labels, [(HEIGHT, WIDTH)] * len(labels))


def prediction_with_score(points, confidence, fixed, score_name, selection, logits=None):
    fixed = np.asarray(fixed, bool)
    score = review.review_scores(score_name, points, confidence, logits, (HEIGHT, WIDTH), fixed, selection)
    return Prediction(points, confidence, fixed, [f"L{k}" for k in range(len(points))], review_score=score)


# ------------------------------------------------------------------ scores and ranking


@pytest.mark.parametrize("displaced", [0, 21, 40, 67])
def test_neighbour_disagreement_ranks_a_displaced_point_first(phantom_selection, displaced):
    points = spine_corners(np.random.default_rng(7), HEIGHT, WIDTH).reshape(-1, 2)
    points[displaced] += (14.0, -10.0)  # a few mm off, well inside the image
    prediction = prediction_with_score(points, np.full(68, 0.9), np.zeros(68), "neighbours", phantom_selection)
    assert review.rank_for_review(prediction)[0] == displaced


def test_morphology_disagreement_flags_a_point_its_selected_relations_cover(phantom_selection):
    points = spine_corners(np.random.default_rng(7), HEIGHT, WIDTH).reshape(-1, 2)
    points[0] += (14.0, -10.0)  # T1's top-left corner: in the selection's steadiest distances
    prediction = prediction_with_score(points, np.full(68, 0.9), np.zeros(68), "morphology", phantom_selection)
    assert review.rank_for_review(prediction)[0] == 0


def test_spread_away_discounts_the_spread_near_fixed_points_only():
    points = np.stack([np.full(9, 50.0), 100.0 * np.arange(9)], axis=1)  # a column, extent 800 px
    spread = np.array([10.0, 10.0, 10.0, 12.0, 30.0, 20.0, 11.0, 11.0, 15.0])
    np.testing.assert_array_equal(review.spread_away_from_fixed(spread, points, np.zeros(9, bool)), spread)
    fixed = np.zeros(9, bool)
    fixed[4] = True
    away = review.spread_away_from_fixed(spread, points, fixed)
    assert away[4] == 0  # at the fixed point
    assert away[3] < 0.6 * spread[3] and away[5] < 0.6 * spread[5]  # its neighbours, 100 px = 1.25 L away
    np.testing.assert_allclose(away[[0, 8]], spread[[0, 8]], rtol=1e-4)  # 400 px = 5 L away: all but untouched
    # so the next check is no longer the fixed point's neighbour with the larger spread
    free = ~fixed
    assert np.argmax(np.where(free, spread, -np.inf)) == 5 and np.argmax(np.where(free, away, -np.inf)) == 8


def test_the_default_ranking_discounts_near_clicks_only_where_clicks_move_other_points(tiny_model, phantom):
    image = Radiograph(phantom.image, phantom.spacing, True)
    propagating = KeypointSession(tiny_model, image, optimized=False, correction_length=0.1)
    alone = KeypointSession(tiny_model, image, optimized=False, correction_length=0.0)
    assert propagating.review_score_name == review.PROPAGATING_SCORE == "spread-away"
    assert alone.review_score_name == review.DEFAULT_SCORE == "spread"
    first = propagating.predict()
    np.testing.assert_allclose(first.review_score, alone.predict().review_score)  # no click: the same
    after = propagating.refine({30: first.points[30] + 5.0})
    spread = review.heatmap_spread(propagating._history[-1].logits, phantom.image.shape)
    expected = review.spread_away_from_fixed(spread, after.points, after.fixed)
    np.testing.assert_allclose(after.review_score[~after.fixed], expected[~after.fixed])


def test_ranking_leaves_fixed_points_out_and_orders_by_score():
    score = np.array([0.2, 5.0, 1.0, 3.0])
    fixed = np.array([False, True, False, False])
    prediction = Prediction(
        np.zeros((4, 2)), np.ones(4), fixed, list("abcd"), review_score=np.where(fixed, -np.inf, score)
    )
    assert review.rank_for_review(prediction) == [3, 2, 0]
    # built without a score: every free point ties, in landmark order
    assert review.rank_for_review(Prediction(np.zeros((4, 2)), np.ones(4), fixed, list("abcd"))) == [0, 2, 3]


def bump(x, y, height=0.95, h=64, w=32):
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return height * torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2))


def heatmap_logits(probs):
    return torch.logit(torch.stack(probs).clamp(1e-4, 1 - 1e-4))


def test_heatmap_spread_is_larger_for_two_peaks_than_one():
    logits = heatmap_logits([bump(10, 20), bump(10, 20) + bump(20, 50, 0.9)])
    spread = review.heatmap_spread(logits, (640, 320))  # 10 original px per heatmap px
    assert spread[1] > 5 * spread[0]
    assert 5 < spread[0] < 40  # about sigma, in original pixels


def test_low_confidence_and_combined_put_an_unsure_hesitating_point_first():
    # 6 landmarks with sharp, high peaks; landmark 4 lower and split between two places
    maps = [bump(5 + 4 * k, 10 + 8 * k) for k in range(6)]
    maps[4] = bump(21, 42, 0.6) + bump(10, 55, 0.5)
    logits = heatmap_logits(maps)
    confidence = torch.sigmoid(logits).flatten(1).max(1).values.numpy()
    for name in ("low-confidence", "spread", "combined"):
        score = review.review_scores(name, np.zeros((6, 2)), confidence, logits, (640, 320), np.zeros(6, bool))
        prediction = Prediction(np.zeros((6, 2)), confidence, np.zeros(6, bool), list("abcdef"), review_score=score)
        assert review.rank_for_review(prediction)[0] == 4, name
    fixed = np.zeros(6, bool)
    fixed[4] = True
    score = review.review_scores("combined", np.zeros((6, 2)), confidence, logits, (640, 320), fixed)
    assert score[4] == -np.inf and np.isfinite(np.delete(score, 4)).all()


def test_scores_that_need_morphology_are_refused_without_it():
    for name in review.NEEDS_MORPHOLOGY:
        with pytest.raises(ValueError, match="morphology"):
            review.available_score(name, None)
    with pytest.raises(ValueError, match="unknown review score"):
        review.available_score("entropy", None)
    assert review.available_score(None, None) not in review.NEEDS_MORPHOLOGY


def test_selection_records_means_and_with_review_stats_backfills_them(phantom_selection):
    labels = np.stack([spine_corners(np.random.default_rng(100 + i), HEIGHT, WIDTH).reshape(-1, 2) for i in range(40)])
    review_keys = ("pair_mean", "triplet_mean", "neighbour_pairs", "neighbour_mean", "neighbour_cov")
    old = MorphologySelection(
        phantom_selection.pairs,
        phantom_selection.triplets,
        "low",
        68,
        {k: v for k, v in phantom_selection.stats.items() if k not in review_keys},
    )
    with pytest.raises(ValueError, match="with_review_stats"):
        review.neighbour_disagreement(labels[0], (HEIGHT, WIDTH), old)
    restored = with_review_stats(old, labels, [(HEIGHT, WIDTH)] * 40)
    for key in review_keys:
        np.testing.assert_allclose(restored.stats[key], phantom_selection.stats[key])
    # every landmark has its own neighbour offsets
    assert set(np.ravel(restored.stats["neighbour_pairs"])) == set(range(68))
    # the typical shape disagrees with itself by nothing but the spread of the training labels
    pair_z, _ = review.relation_disagreement(labels[0], (HEIGHT, WIDTH), restored)
    assert np.all(pair_z < 6)


# ------------------------------------------------------------------ the shipped phantom model


@pytest.fixture(scope="module")
def phantom_model():
    return load_model(PHANTOM_MODEL)


@pytest.fixture(scope="module")
def phantom_image():
    return make_spine_phantom(12345, height=HEIGHT, width=WIDTH)


def test_shipped_phantom_model_has_review_scores_and_ranks_a_moved_point_first(phantom_model, phantom_image):
    session = KeypointSession(
        phantom_model, Radiograph(phantom_image.image, phantom_image.spacing, True), optimized=False
    )
    assert session.review_score_name == review.PROPAGATING_SCORE  # the phantom model has a correction field
    prediction = session.predict()
    assert prediction.review_score.shape == (68,) and np.isfinite(prediction.review_score).all()
    selection = review.load_selection(PHANTOM_MODEL)
    for moved in (3, 33, 60):
        points = prediction.points.copy()
        points[moved] += (15.0, 8.0)
        for name in ("neighbours",):
            shifted = prediction_with_score(points, prediction.confidence, prediction.fixed, name, selection)
            assert review.rank_for_review(shifted)[0] == moved, (name, moved)


# ------------------------------------------------------------------ confirm


@pytest.fixture
def tiny_session(tiny_model, phantom):
    return KeypointSession(tiny_model, Radiograph(phantom.image, phantom.spacing, True), optimized=False)


def test_confirm_is_a_refine_with_zero_move_and_is_undoable(tiny_model, phantom, tiny_session):
    initial = tiny_session.predict()
    confirmed = tiny_session.confirm(5)
    np.testing.assert_array_equal(confirmed.points[5], initial.points[5])
    assert confirmed.fixed[5] and confirmed.fixed.sum() == 1
    assert confirmed.review_score[5] == -np.inf and 5 not in review.rank_for_review(confirmed)

    other = KeypointSession(tiny_model, Radiograph(phantom.image, phantom.spacing, True), optimized=False)
    refined = other.refine({5: other.predict().points[5]})
    np.testing.assert_array_equal(confirmed.points, refined.points)
    np.testing.assert_array_equal(confirmed.review_score, refined.review_score)

    undone = tiny_session.undo()
    np.testing.assert_array_equal(undone.points, initial.points)
    assert not undone.fixed.any() and np.isfinite(undone.review_score).all()
    np.testing.assert_array_equal(tiny_session.redo().points, confirmed.points)
    with pytest.raises(IndexError):
        tiny_session.confirm(68)


def test_every_step_carries_a_review_score_with_fixed_points_at_minus_infinity(tiny_session):
    # the tiny model has no morphology.json: a score that needs none
    assert tiny_session.review_score_name == review.available_score(None, None)
    assert tiny_session.review_score_name not in review.NEEDS_MORPHOLOGY
    first = tiny_session.predict()
    assert np.isfinite(first.review_score).all()
    moved = tiny_session.refine({2: (100.0, 200.0), 9: (120.0, 260.0)})
    assert np.isneginf(moved.review_score[[2, 9]]).all() and np.isfinite(np.delete(moved.review_score, [2, 9])).all()
    unfixed = tiny_session.unfix([2])
    assert np.isfinite(unfixed.review_score[2]) and np.isneginf(unfixed.review_score[9])


# ------------------------------------------------------------------ the guided simulated user


def test_guided_chooser_sees_only_the_prediction(tiny_model, phantom):
    seen = []

    def spy(prediction):
        assert isinstance(prediction, Prediction)
        seen.append(prediction)
        return evaluate.next_for_review(prediction)

    session = KeypointSession(tiny_model, Radiograph(phantom.image, phantom.spacing, True), optimized=False)
    curves = evaluate.simulate_guided(session, phantom.points, 4, tolerance_px=20.0, choose=spy)
    assert len(seen) == 4
    # each choice is the first-ranked point of the prediction it was shown
    assert list(curves.model_clicks) == [review.rank_for_review(p)[0] for p in seen]


def guided_run(model, phantom, truth, tolerance):
    session = KeypointSession(model, Radiograph(phantom.image, phantom.spacing, True), optimized=False)
    return evaluate.simulate_guided(session, truth, 6, tolerance_px=tolerance)


@pytest.mark.parametrize("tolerance", [1e9, 40.0])
def test_guided_choices_do_not_depend_on_the_truth_until_a_decision_does(tiny_model, phantom, tolerance):
    truth = phantom.points
    permuted = truth[np.random.default_rng(0).permutation(len(truth))]
    a, b = guided_run(tiny_model, phantom, truth, tolerance), guided_run(tiny_model, phantom, permuted, tolerance)
    differ = np.flatnonzero(a.confirmed != b.confirmed)
    first = differ[0] if len(differ) else len(a.confirmed) - 1
    np.testing.assert_array_equal(a.model_clicks[: first + 1], b.model_clicks[: first + 1])
    if tolerance > 1e8:  # nothing is ever corrected: the truth plays no part at all
        assert a.confirmed.all() and b.confirmed.all()
        np.testing.assert_array_equal(a.points_by_clicks, b.points_by_clicks)
        assert len(set(a.model_clicks)) == 6


def test_guided_user_corrects_points_above_the_tolerance_and_confirms_the_rest(tiny_model, phantom):
    curves = guided_run(tiny_model, phantom, phantom.points, 0.0)
    assert not curves.confirmed.any()  # an untrained model is wrong everywhere
    last = curves.points_by_clicks[-1]
    np.testing.assert_array_equal(last[curves.model_clicks], phantom.points[curves.model_clicks])
    assert curves.model.shape == (7,) and curves.manual.shape == (7,)


# ------------------------------------------------------------------ click noise


def test_click_noise_is_reproducible_by_seed_and_stays_in_the_image():
    truth = np.array([[0.0, 0.0], [100.0, 50.0], [255.0, 511.0]])
    first = evaluate.noisy_clicks(truth, 6.0, (512, 256), (0, 3))
    again = evaluate.noisy_clicks(truth, 6.0, (512, 256), (0, 3))
    other = evaluate.noisy_clicks(truth, 6.0, (512, 256), (1, 3))
    placed = np.array([first(k, truth[k]) for k in range(3)])
    np.testing.assert_array_equal(placed, [again(k, truth[k]) for k in range(3)])
    assert not np.allclose(placed, [other(k, truth[k]) for k in range(3)])
    assert np.all(placed >= -0.5) and np.all(placed <= [255.5, 511.5])
    np.testing.assert_array_equal(first(1, truth[1]), first(1, truth[1]))  # the same landmark lands alike


def test_evaluate_runs_oracle_and_guided_with_click_noise_reproducibly(tmp_path):
    from interactive_keypoints import cli

    def run(out):
        args = [
            "evaluate",
            "--model",
            str(PHANTOM_MODEL),
            "--dataset",
            "phantom",
            "--phantom-images",
            "4",
            "--limit",
            "1",
            "--max-clicks",
            "2",
            "--targets",
            "2",
            "5",
            "--user",
            "oracle",
            "guided",
            "--click-noise",
            "1.5",
            "--click-seed",
            "4",
            "--threads",
            "1",
            "--quiet",
            "--out",
            str(out),
        ]
        assert cli.main(args) == 0
        return json.loads((out / "metrics.json").read_text())

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert first["users"] == second["users"]  # same seed, same clicks, same curves
    assert set(first["users"]) == {"oracle", "guided"}
    assert first["click_noise"] == {"sd": 1.5, "unit": "px", "seed": 4}
    assert first["guided"]["review_score"] == review.PROPAGATING_SCORE and first["guided"]["tolerance"] == 2
    assert len(first["users"]["guided"]["MRE_by_clicks"]["model"]) == 3
    assert (tmp_path / "a" / "users_mre_vs_clicks.png").is_file()


def test_a_session_uses_the_review_score_it_is_asked_for(tiny_model, phantom):
    session = KeypointSession(
        tiny_model, Radiograph(phantom.image, phantom.spacing, True), optimized=False, review_score="low-confidence"
    )
    first = session.predict()
    np.testing.assert_allclose(first.review_score, 1 - first.confidence)
    with pytest.raises(ValueError, match="morphology"):  # the tiny model has no morphology.json
        KeypointSession(tiny_model, Radiograph(phantom.image, phantom.spacing, True), review_score="neighbours")
