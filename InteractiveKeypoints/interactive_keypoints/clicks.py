"""Simulated user clicks for training and evaluation (RITM-style).

Training starts each sample with a random number of clicks on random keypoints; the number
follows the paper's categorical distribution, heavy on 0-2 clicks. During evaluation and the
iterative training passes, the simulated user clicks the worst keypoint not yet clicked.
"""

from __future__ import annotations

import numpy as np
import torch

from .conventions import radial_errors

# P(number of initial clicks = 0, 1, ..., 12); zero above 12. Sums to 1 exactly.
CLICK_COUNT_PROBS = np.array([1 / 8, 1 / 2, 1 / 4] + [2.0**-n for n in range(4, 13)] + [1 / 4096])


def click_count_probabilities(num_keypoints: int) -> np.ndarray:
    """P(c) for c = 0..min(12, K), renormalised after capping at K."""
    probs = CLICK_COUNT_PROBS[: min(len(CLICK_COUNT_PROBS), num_keypoints + 1)]
    return probs / probs.sum()


def sample_num_clicks(rng: np.random.Generator, num_keypoints: int) -> int:
    probs = click_count_probabilities(num_keypoints)
    return int(rng.choice(len(probs), p=probs))


def sample_click_mask(rng: np.random.Generator, num_keypoints: int) -> np.ndarray:
    """(K,) bool: a random number of keypoints, chosen uniformly without replacement."""
    mask = np.zeros(num_keypoints, dtype=bool)
    mask[rng.choice(num_keypoints, size=sample_num_clicks(rng, num_keypoints), replace=False)] = True
    return mask


def worst_keypoint(pred, truth, clicked) -> int:
    """Index of the largest radial error among keypoints not yet clicked; (K, 2), (K, 2), (K,)."""
    clicked = np.asarray(clicked, dtype=bool)
    if clicked.all():
        raise ValueError("every keypoint is already clicked: there is no keypoint left to click")
    return int(np.argmax(np.where(clicked, -np.inf, radial_errors(pred, truth))))


def worst_keypoints(pred: torch.Tensor, truth: torch.Tensor, clicked: torch.Tensor) -> torch.Tensor:
    """Batched :func:`worst_keypoint` for training: (B, K, 2), (B, K, 2), (B, K) bool -> (B,).

    Rows where everything is clicked return -1. Errors stay on the device (no sync per batch).
    """
    errors = torch.linalg.vector_norm(pred.detach() - truth, dim=-1)
    errors = errors.masked_fill(clicked, float("-inf"))
    worst = errors.argmax(dim=-1)
    return torch.where(clicked.all(dim=-1), torch.full_like(worst, -1), worst)
