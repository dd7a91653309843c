"""Propagation gain arithmetic and the near-landmark rule (no model, no data needed)."""

import numpy as np
import pytest

from interactive_keypoints.conventions import CEPH, SPINE
from interactive_keypoints.propagation import (
    gain_clicks,
    masked_mre,
    near_landmarks,
    near_rule,
    near_set_by_clicks,
    propagation_gain,
    spine_vertebrae,
)

SPINE_TRUTH = np.zeros((68, 2))  # the spine rule does not look at positions


def indices(mask):
    return set(np.flatnonzero(mask).tolist())


def test_a_model_that_equals_manual_revision_gains_nothing():
    curves = np.array([[30.0, 25.0, 20.0, 18.0], [12.0, 11.0, 10.0, 9.0]])
    gain = propagation_gain(curves, curves.copy(), [1, 2, 3])
    assert gain["gain"] == [0.0, 0.0, 0.0] and gain["percent"] == [0.0, 0.0, 0.0]
    assert gain["model"] == gain["manual"] == pytest.approx([18.0, 15.0, 13.5])


def test_gain_by_hand():
    model = np.array([[10.0, 8.0, 6.0, 5.0], [20.0, 10.0, 8.0, 6.0]])
    manual = np.array([[10.0, 9.0, 8.0, 7.0], [20.0, 16.0, 12.0, 10.0]])
    gain = propagation_gain(model, manual, [1, 3])
    # 1 click: model (8 + 10) / 2 = 9, manual (9 + 16) / 2 = 12.5 -> 3.5 px, 28 % of 12.5
    # 3 clicks: model 5.5, manual 8.5 -> 3 px, 35.29 %
    assert gain["model"] == pytest.approx([9.0, 5.5]) and gain["manual"] == pytest.approx([12.5, 8.5])
    assert gain["gain"] == pytest.approx([3.5, 3.0])
    assert gain["percent"] == pytest.approx([28.0, 300 / 8.5])
    # a model worse than manual revision has a negative gain
    assert propagation_gain(manual, model, [1])["gain"] == pytest.approx([-3.5])


def test_images_without_a_value_leave_both_runs():
    model = np.array([[10.0, 4.0], [10.0, np.nan]])
    manual = np.array([[10.0, 6.0], [10.0, 100.0]])
    gain = propagation_gain(model, manual, [1])
    assert gain["model"] == [4.0] and gain["manual"] == [6.0] and gain["gain"] == [2.0]


def test_gain_refuses_click_counts_the_curves_lack():
    with pytest.raises(ValueError, match="0..3 clicks"):
        propagation_gain(np.zeros((2, 4)), np.zeros((2, 4)), [5])
    with pytest.raises(ValueError, match="one shape"):
        propagation_gain(np.zeros((2, 4)), np.zeros((2, 3)), [1])


def test_gain_clicks_within_the_run():
    assert gain_clicks(10) == [1, 2, 3, 5]
    assert gain_clicks(5) == [1, 2, 3, 5]
    assert gain_clicks(4) == [1, 2, 3]
    assert gain_clicks(0) == []


def test_spine_neighbours_are_the_clicked_vertebra_and_the_ones_above_and_below():
    # T5-bottom-right (index 19): T4 = 12..15, T5 = 16..18 (19 itself left out), T6 = 20..23
    assert SPINE.names[19] == "T5-bottom-right"
    assert indices(near_landmarks(19, SPINE.names, SPINE_TRUTH)) == set(range(12, 19)) | set(range(20, 24))
    # the ends have one neighbour: T1-top-left -> T1's other corners and T2; L5 -> L4 and L5
    assert indices(near_landmarks(0, SPINE.names, SPINE_TRUTH)) == {1, 2, 3, 4, 5, 6, 7}
    assert indices(near_landmarks(66, SPINE.names, SPINE_TRUTH)) == {60, 61, 62, 63, 64, 65, 67}
    assert near_rule(SPINE.names).startswith("spine")


def test_the_spine_rule_needs_the_corner_order():
    assert list(spine_vertebrae(SPINE.names)[:9]) == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    swapped = list(SPINE.names)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    assert spine_vertebrae(swapped) is None
    assert spine_vertebrae(CEPH.names) is None
    assert spine_vertebrae([f"L{k}" for k in range(68)]) is None


def test_five_nearest_for_a_19_landmark_template():
    # landmarks on a line at the triangular numbers 0, 1, 3, 6, 10, ...: all gaps differ
    x = np.array([k * (k + 1) / 2 for k in range(19)])
    truth = np.stack([x, np.full(19, 7.0)], axis=1)
    assert indices(near_landmarks(0, CEPH.names, truth)) == {1, 2, 3, 4, 5}
    # around landmark 10 (x = 55): 9 at 10, 11 at 11, 8 at 19, 12 at 23, 7 at 27, then 13 at 36
    assert indices(near_landmarks(10, CEPH.names, truth)) == {7, 8, 9, 11, 12}
    assert near_rule(CEPH.names).startswith("the 5 landmarks nearest")


def test_near_set_is_the_union_over_clicks_without_the_clicked_ones():
    masks = near_set_by_clicks(np.array([0, 4]), SPINE.names, SPINE_TRUTH)  # T1-top-left, then T2-top-left
    assert masks.shape == (3, 68) and not masks[0].any()
    assert indices(masks[1]) == {1, 2, 3, 4, 5, 6, 7}
    assert indices(masks[2]) == {1, 2, 3, 5, 6, 7, 8, 9, 10, 11}  # + T3, without the clicked T2 corner


def test_masked_mre_averages_the_masked_landmarks_only():
    errors = np.array([[[1.0, 2.0, 9.0], [4.0, 6.0, 100.0]]])  # (N=1, C+1=2, K=3)
    masks = np.array([[[False, False, False], [True, True, False]]])
    result = masked_mre(errors, masks)
    assert np.isnan(result[0, 0]) and result[0, 1] == pytest.approx(5.0)


def test_near_landmarks_rejects_bad_input():
    with pytest.raises(ValueError, match="19 landmark names for 68 points"):
        near_landmarks(0, CEPH.names, SPINE_TRUTH)
    with pytest.raises(ValueError, match="clicked landmark 68"):
        near_landmarks(68, SPINE.names, SPINE_TRUTH)
