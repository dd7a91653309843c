"""Simulated user clicks for training and evaluation (RITM-style).

Training starts each sample with a random number of clicks on random keypoints; the number
follows the paper's categorical distribution, heavy on 0-2 clicks. After that one
:class:`SimulatedUser` clicks, in the iterative training passes, the validation and
``evaluate``: the worst keypoint not yet clicked, put at its true position (plus its click
noise), as MONAI deepgrow's ``Interaction`` serves both its trainer and its evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def previous_input(prev: torch.Tensor, clicked: torch.Tensor, channels: str) -> torch.Tensor:
    """The previous prediction as the network sees it: every channel (training as in the
    paper) or only the clicked ones (the paper's inference rule, session.py's ``fixed``)."""
    return prev if channels == "all" else prev * clicked[..., None, None].to(prev.dtype)


@dataclass
class SimulatedUser:
    """The simulated user of training, validation and evaluation, batched over images.

    It clicks the worst keypoint not yet clicked (the protocol's oracle) and puts it at its
    true position plus that landmark's click error: ``offsets`` (..., K, 2) px, drawn once, so
    the same landmark lands alike whichever run clicks it, kept inside ``image_size`` (H, W).
    No offsets: exact clicks. ``tolerance_px``: a user that corrects only points further than
    this from the truth and confirms the rest (the guided user); None corrects every click.
    Arrays are torch tensors on the device (training, validation: no sync per click) or
    numpy arrays (evaluation, through the session).
    """

    offsets: np.ndarray | None = None
    image_size: tuple[int, int] | None = None
    tolerance_px: float | None = None

    @classmethod
    def with_click_noise(
        cls, num_keypoints: int, sd_px: float, image_size: tuple[int, int], seed, tolerance_px: float | None = None
    ) -> SimulatedUser:
        """A user whose clicks land with Gaussian error of ``sd_px`` per axis, from ``seed``."""
        offsets = np.random.default_rng(seed).normal(0.0, sd_px, size=(num_keypoints, 2))
        return cls(offsets, image_size, tolerance_px)

    def next_clicks(self, predictions, truth, clicked, clickable=None):
        """(B,) the keypoint each image's user clicks next: the largest radial error among those
        not ``clicked`` (and ``clickable``, e.g. labelled and visible); -1 where none is left.
        (B, K, 2), (B, K, 2), (B, K) bool, optional (B, K) bool."""
        if isinstance(predictions, torch.Tensor):
            blocked = clicked if clickable is None else clicked | ~clickable
            return worst_keypoints(predictions, truth, blocked)
        blocked = np.asarray(clicked, dtype=bool)
        if clickable is not None:
            blocked = blocked | ~np.asarray(clickable, dtype=bool)
        worst = np.where(blocked, -np.inf, radial_errors(predictions, truth)).argmax(axis=-1)
        return np.where(blocked.all(axis=-1), -1, worst)

    def click(self, predictions, truth, clicked, clickable=None):
        """:meth:`next_clicks`, marked in ``clicked`` (in place); returns the (B,) indices."""
        index = self.next_clicks(predictions, truth, clicked, clickable)
        rows = (index >= 0).nonzero()[0] if isinstance(index, np.ndarray) else None
        if rows is not None:
            clicked[rows, index[rows]] = True
        else:  # on the device without a sync: a one-hot of the chosen index, none where -1
            chosen = torch.nn.functional.one_hot(index.clamp(min=0), clicked.shape[-1]).bool()
            clicked |= chosen & (index >= 0)[:, None]
        return index

    def place(self, index: int, xy: np.ndarray) -> np.ndarray:
        """Where the user puts landmark ``index`` whose true position is ``xy``."""
        if self.offsets is None:
            return xy
        h, w = self.image_size or (np.inf, np.inf)
        return np.clip(np.asarray(xy, float) + self.offsets[index], [-0.5, -0.5], [w - 0.5, h - 0.5])

    def corrects(self, point: np.ndarray, xy: np.ndarray) -> bool:
        """Whether the user moves a point at ``point`` whose true position is ``xy`` (else confirms it)."""
        return self.tolerance_px is None or bool(np.linalg.norm(point - xy) > self.tolerance_px)
