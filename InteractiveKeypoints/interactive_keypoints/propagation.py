"""Propagation gain: how much better model revision is than manual revision.

After c simulated clicks, manual revision has moved only the clicked points; model
revision has re-run the network, which also moves the points it did not click. The gain is
manual minus model MRE at the same click count (positive: the re-run helped), in the
error's unit and as a percent of the manual MRE.

The gain is measured on all landmarks and on the landmarks *near* the clicked ones, where
a correction should help most. :func:`near_landmarks` holds the one rule for "near".
"""

from __future__ import annotations

import re

import numpy as np

from .conventions import SPINE_CORNERS

GAIN_CLICKS = (1, 2, 3, 5)
NEAREST_COUNT = 5
_SPINE_NAME = re.compile(rf"^(?P<vertebra>.+)-(?P<corner>{'|'.join(SPINE_CORNERS)})$")


def spine_vertebrae(landmark_names: list[str]) -> np.ndarray | None:
    """Vertebra index (0 = top) of every landmark for a spine template, else None.

    A spine template names 4 corners per vertebra, ``<vertebra>-<corner>`` in the order
    top-left, top-right, bottom-left, bottom-right, vertebrae listed top to bottom (AASCE:
    ``T1-top-left`` .. ``L5-bottom-right``).
    """
    if not landmark_names or len(landmark_names) % 4:
        return None
    vertebra_of: list[str] = []
    for k, name in enumerate(landmark_names):
        match = _SPINE_NAME.match(name)
        if match is None or match["corner"] != SPINE_CORNERS[k % 4]:
            return None
        if k % 4 and match["vertebra"] != vertebra_of[-1]:
            return None
        vertebra_of.append(match["vertebra"])
    if len(set(vertebra_of)) != len(landmark_names) // 4:  # a vertebra named twice
        return None
    return np.arange(len(landmark_names)) // 4


def near_rule(landmark_names: list[str]) -> str:
    """The rule :func:`near_landmarks` applies to this template, in words (for metrics.json)."""
    if spine_vertebrae(landmark_names) is not None:
        return "spine: the corners of the clicked vertebra and of the vertebrae above and below"
    return f"the {NEAREST_COUNT} landmarks nearest the clicked one (true positions)"


def near_landmarks(clicked: int, landmark_names: list[str], truth: np.ndarray) -> np.ndarray:
    """(K,) bool: the landmarks near landmark ``clicked``, itself excluded.

    Spine templates (see :func:`spine_vertebrae`): the other corners of the clicked
    vertebra and all corners of the vertebra above and below it. Any other template (ceph
    and the rest): the ``NEAREST_COUNT`` landmarks nearest to it in ``truth`` (K, 2), the
    image's true positions.
    """
    truth = np.asarray(truth, dtype=np.float64)
    num_keypoints = len(truth)
    if len(landmark_names) != num_keypoints:
        raise ValueError(f"{len(landmark_names)} landmark names for {num_keypoints} points")
    if not 0 <= clicked < num_keypoints:
        raise ValueError(f"clicked landmark {clicked} is not one of the {num_keypoints}")
    vertebra = spine_vertebrae(landmark_names)
    if vertebra is not None:
        near = np.abs(vertebra - vertebra[clicked]) <= 1
    else:
        distance = np.linalg.norm(truth - truth[clicked], axis=-1)
        distance[clicked] = np.inf
        near = np.zeros(num_keypoints, bool)
        near[np.argsort(distance, kind="stable")[: min(NEAREST_COUNT, num_keypoints - 1)]] = True
    near[clicked] = False
    return near


def near_set_by_clicks(clicks: np.ndarray, landmark_names: list[str], truth: np.ndarray) -> np.ndarray:
    """(C + 1, K) bool: after c = 0..C clicks, the union of the landmarks near the clicks so
    far, without any landmark clicked so far. ``clicks`` (C,) are landmark indices in click order."""
    num_keypoints = len(truth)
    masks = np.zeros((len(clicks) + 1, num_keypoints), bool)
    near = np.zeros(num_keypoints, bool)
    clicked = np.zeros(num_keypoints, bool)
    for c, k in enumerate(clicks, start=1):
        near |= near_landmarks(int(k), landmark_names, truth)
        clicked[int(k)] = True
        masks[c] = near & ~clicked
    return masks


def masked_mre(errors: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, C + 1) mean of ``errors`` (N, C + 1, K) over the landmarks in ``masks``
    (same shape); NaN where a mask is empty."""
    counts = masks.sum(-1)
    totals = np.where(masks, errors, 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def gain_clicks(max_clicks: int, wanted=GAIN_CLICKS) -> list[int]:
    """The click counts of ``wanted`` that a run of ``max_clicks`` covers."""
    return [c for c in wanted if c <= max_clicks]


def propagation_gain(model_mre: np.ndarray, manual_mre: np.ndarray, clicks: list[int]) -> dict[str, list[float]]:
    """Manual minus model MRE after each of ``clicks``, from per-image curves (N, C + 1).

    Returns ``{"model", "manual", "gain", "percent"}``, one value per click count: the
    mean over images (images without a value, NaN, left out) of model and manual MRE,
    their difference, and the difference as a percent of the manual mean.
    """
    model_mre, manual_mre = np.asarray(model_mre, float), np.asarray(manual_mre, float)
    if model_mre.shape != manual_mre.shape or model_mre.ndim != 2:
        raise ValueError(f"expected two (N, C + 1) curves of one shape, got {model_mre.shape} and {manual_mre.shape}")
    if any(not 0 <= c < model_mre.shape[1] for c in clicks):
        raise ValueError(f"click counts {clicks} but the curves cover 0..{model_mre.shape[1] - 1} clicks")
    # both runs averaged over the same images: those with a value in both
    both = ~(np.isnan(model_mre) | np.isnan(manual_mre))
    out: dict[str, list[float]] = {"model": [], "manual": [], "gain": [], "percent": []}
    for c in clicks:
        rows = both[:, c]
        model = float(model_mre[rows, c].mean()) if rows.any() else float("nan")
        manual = float(manual_mre[rows, c].mean()) if rows.any() else float("nan")
        out["model"].append(model)
        out["manual"].append(manual)
        out["gain"].append(manual - model)
        out["percent"].append(100.0 * (manual - model) / manual if manual > 0 else float("nan"))
    return out
