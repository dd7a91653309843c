import numpy as np
import pytest
import torch

from interactive_keypoints.clicks import (
    CLICK_COUNT_PROBS,
    SimulatedUser,
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


def test_simulated_user_clicks_alike_on_the_device_and_in_numpy():
    # training/validation (torch, batched) and evaluate (numpy) get the same choices from one user
    rng = np.random.default_rng(2)
    truth, pred = rng.uniform(0, 50, (3, 5, 2)), rng.uniform(0, 50, (3, 5, 2))
    clickable = np.ones((3, 5), bool)
    clickable[1, [0, 1, 2, 3]] = False
    user = SimulatedUser()
    clicked_np, clicked_t = np.zeros((3, 5), bool), torch.zeros(3, 5, dtype=torch.bool)
    for _ in range(5):
        a = user.click(pred, truth, clicked_np, clickable)
        b = user.click(torch.from_numpy(pred), torch.from_numpy(truth), clicked_t, torch.from_numpy(clickable))
        assert a.tolist() == b.tolist()
        np.testing.assert_array_equal(clicked_np, clicked_t.numpy())
    # image 1 had one clickable point: clicked once, then -1 (nothing left) and nothing marked
    assert clicked_np.tolist()[1] == [False, False, False, False, True]
    assert a[1] == -1 and clicked_np.all(axis=1).tolist() == [True, False, True]
    # the first click is the worst point of each image
    first = SimulatedUser().next_clicks(pred, truth, np.zeros((3, 5), bool))
    assert first.tolist() == [worst_keypoint(p, t, np.zeros(5, bool)) for p, t in zip(pred, truth)]


def test_simulated_user_places_with_its_noise_and_decides_by_tolerance():
    truth = np.array([[0.0, 0.0], [100.0, 50.0]])
    np.testing.assert_array_equal(SimulatedUser().place(1, truth[1]), truth[1])  # exact clicks
    noisy = SimulatedUser.with_click_noise(2, 6.0, (512, 256), seed=0)
    assert not np.allclose(noisy.place(1, truth[1]), truth[1])
    assert np.all(noisy.place(0, truth[0]) >= -0.5)  # stays inside the image
    assert SimulatedUser().corrects(truth[1], truth[1])  # the oracle corrects every click
    guided = SimulatedUser(tolerance_px=5.0)
    assert guided.corrects(truth[1] + 6, truth[1]) and not guided.corrects(truth[1] + 3, truth[1])
