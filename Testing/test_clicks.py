import numpy as np
import pytest
import torch

from interactive_keypoints.clicks import (
    CLICK_COUNT_PROBS,
    click_count_probabilities,
    sample_click_mask,
    sample_num_clicks,
    worst_keypoint,
    worst_keypoints,
)


def test_paper_probabilities():
    assert CLICK_COUNT_PROBS.sum() == pytest.approx(1.0)
    assert CLICK_COUNT_PROBS[:5] == pytest.approx([1 / 8, 1 / 2, 1 / 4, 1 / 16, 1 / 32])
    assert CLICK_COUNT_PROBS[-2:] == pytest.approx([1 / 4096, 1 / 4096])
    assert len(click_count_probabilities(68)) == 13  # zero above 12


def test_capped_at_k_and_renormalised():
    probs = click_count_probabilities(2)
    assert probs == pytest.approx(np.array([1 / 8, 1 / 2, 1 / 4]) / (7 / 8))
    rng = np.random.default_rng(0)
    assert max(sample_num_clicks(rng, 2) for _ in range(500)) == 2


def test_click_count_distribution_matches():
    rng = np.random.default_rng(123)
    n = 20000
    counts = np.bincount([sample_num_clicks(rng, 68) for _ in range(n)], minlength=13)
    assert len(counts) == 13
    expected = CLICK_COUNT_PROBS * n
    # chi-square over the well-populated bins 0..5 (5 dof; p = 0.001 critical value 20.5)
    chi2 = (((counts[:6] - expected[:6]) ** 2) / expected[:6]).sum()
    assert chi2 < 20.5
    assert counts[6:].sum() == pytest.approx(expected[6:].sum(), abs=5 * np.sqrt(expected[6:].sum()))


def test_click_mask_is_uniform_without_replacement():
    rng = np.random.default_rng(1)
    masks = np.array([sample_click_mask(rng, 10) for _ in range(4000)])
    assert masks.dtype == bool and masks.shape == (4000, 10)
    # every keypoint equally likely: mean clicks 1.5ish spread over 10 keypoints
    per_key = masks.mean(axis=0)
    assert per_key.max() - per_key.min() < 0.04
    assert masks.sum(axis=1).max() <= 10


def test_worst_keypoint_skips_clicked():
    truth = np.zeros((4, 2))
    pred = np.array([[0, 1], [5, 0], [0, 3], [0, 0]], dtype=float)
    assert worst_keypoint(pred, truth, [False] * 4) == 1
    assert worst_keypoint(pred, truth, [False, True, False, False]) == 2
    with pytest.raises(ValueError, match="already clicked"):
        worst_keypoint(pred, truth, [True] * 4)


def test_worst_keypoints_batched():
    truth = torch.zeros(2, 3, 2)
    pred = torch.tensor([[[1.0, 0], [9, 0], [2, 0]], [[4.0, 0], [1, 0], [1, 0]]])
    clicked = torch.tensor([[False, True, False], [True, True, True]])
    assert worst_keypoints(pred, truth, clicked).tolist() == [2, -1]
