"""Which point to check next: a per-landmark "check next" score from the model itself.

A clinician has no oracle that points at the worst landmark; they must find it. Every
prediction carries a score per landmark (higher = check first) and :func:`rank_for_review`
orders the points that are not yet fixed by it. Candidate scores, one function each:

- ``low-confidence``: 1 - heatmap peak (the model's own certainty at its chosen point);
- ``spread``: radius of the heatmap's upper half around the peak, in original pixels (a
  broad or two-peaked response means the model hesitates between places);
- ``spread-away``: ``spread`` times 1 - exp(-d^2 / 2 L^2), d the distance to the nearest
  fixed point, L a tenth of the landmarks' extent (the spine's correction length): the field
  and the click decoder have moved a fixed point's neighbours with it, so their spread (the
  network's alone) overstates what is left to check there. Without fixed points: ``spread``.
  The default where clicks move other points (a correction field or a click decoder): fewer
  guided clicks than ``spread`` on AASCE training and validation images (spine card);
- ``morphology``: how far the point's distances and angles to the others lie from the
  training labels' typical shape, in standard deviations, over the least-variable
  relations of the model folder's ``morphology.json`` (the morphology loss's selection,
  with its means); a landmark can take part in a single, insensitive relation;
- ``neighbours``: the Mahalanobis distance of the point's offsets to its steadiest
  neighbours (6 per landmark, also recorded in ``morphology.json``) from their training
  mean and covariance, averaged over the offsets it takes part in: a displaced point
  breaks all of its own, a neighbour only one of several;
- ``combined``: the sum of the per-image standardised ``low-confidence`` and ``spread``
  scores;
- ``decoder``: the click decoder's check-next head (:mod:`.click_decoder`): the expected
  error (px) it gives each shown point, learned under the simulated user; where the head
  does not apply (more fixed points than it was trained for) the ``spread`` ranks. The
  default for a model folder whose decoder has the head.

Fixed points (placed or confirmed by the user) score -inf and are never ranked.
``evaluate --user guided --review-score NAME`` measures each; the model cards report which wins.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from .correction_field import landmark_extent
from .errors import UsageError
from .morphology import MorphologySelection, normalise_points, ray_angles

SCORES = ("low-confidence", "spread", "spread-away", "morphology", "neighbours", "combined", "decoder")
DEFAULT_SCORE = "spread"  # the fewest guided clicks (NoC10@20) on an AASCE validation sample; see the model cards
# the default instead where a click moves other points (the model's correction field or click decoder)
PROPAGATING_SCORE = "spread-away"
AWAY_LENGTH = 0.1  # spread-away's L, a fraction of the landmarks' extent (0.05 and 0.2: no fewer clicks)
HEAD_SCORE = "decoder"  # the default instead where the model's click decoder has a check-next head (spine card)
NEEDS_MORPHOLOGY = ("morphology", "neighbours")


# ------------------------------------------------------------------ the scores


def low_confidence(confidence) -> np.ndarray:
    """1 - heatmap peak, (K,)."""
    return 1.0 - np.asarray(confidence, dtype=np.float64)


def heatmap_spread(logits: torch.Tensor, image_size) -> np.ndarray:
    """(K, h, w) logits -> (K,) spread in original pixels of a (H, W) image.

    The root mean square distance from the peak of the heatmap above half its peak height,
    weighted by the height above that half: one sharp peak gives about sigma, two peaks
    far apart give about half their distance.
    """
    probs = torch.sigmoid(logits.float())
    k, h, w = probs.shape
    flat = probs.reshape(k, -1)
    peak, index = flat.max(dim=1)
    weight = (flat - peak[:, None] / 2).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    scale_y, scale_x = image_size[0] / h, image_size[1] / w  # heatmap -> original pixels, per axis
    dx = (xs.reshape(1, -1) - (index % w)[:, None].float()) * scale_x
    dy = (ys.reshape(1, -1) - (index // w)[:, None].float()) * scale_y
    spread = torch.sqrt((weight * (dx * dx + dy * dy)).sum(1) / weight.sum(1).clamp(min=1e-12))
    return spread.double().numpy()


def spread_away_from_fixed(spread, points, fixed) -> np.ndarray:
    """(K,) ``spread`` discounted near the fixed points (see the module's ``spread-away``);
    ``points`` (K, 2) original pixels, ``fixed`` (K,) bool."""
    spread = np.asarray(spread, dtype=np.float64)
    fixed = np.asarray(fixed, dtype=bool)
    if not fixed.any():
        return spread
    points = np.asarray(points, dtype=np.float64)
    length = AWAY_LENGTH * max(landmark_extent(points), 1e-6)
    nearest = np.linalg.norm(points[:, None, :] - points[fixed][None, :, :], axis=-1).min(axis=1)
    return spread * -np.expm1(-(nearest**2) / (2 * length**2))


def relation_disagreement(points, image_size, selection: MorphologySelection) -> tuple[np.ndarray, np.ndarray]:
    """Per selected pair and triplet, |value - training mean| / training SD, (P,), (T,).

    Distances in per-axis normalised coordinates (x / W, y / H) as in :mod:`.morphology`;
    angle differences wrapped to [-pi, pi]. SDs are floored at 1e-6 (a relation constant
    in the training labels).
    """
    _check_review_stats(selection)
    norm = normalise_points(np.asarray(points, dtype=np.float64)[None], [image_size])[0]
    pairs, triplets = selection.pairs, selection.triplets
    distance = np.linalg.norm(norm[pairs[:, 0]] - norm[pairs[:, 1]], axis=-1)
    pair_z = np.abs(distance - np.asarray(selection.stats["pair_mean"])) / np.maximum(selection.stats["pair_std"], 1e-6)
    dot, cross = ray_angles(norm, triplets)
    difference = np.angle(np.exp(1j * (np.arctan2(cross, dot) - np.asarray(selection.stats["triplet_mean"]))))
    triplet_z = np.abs(difference) / np.maximum(selection.stats["triplet_std"], 1e-6)
    return pair_z, triplet_z


def morphology_disagreement(points, image_size, selection: MorphologySelection) -> np.ndarray:
    """(K,) mean disagreement (in SDs) of the selected relations each landmark takes part
    in; 0 for a landmark in none. ``points`` (K, 2) original pixels of a (H, W) image."""
    pair_z, triplet_z = relation_disagreement(points, image_size, selection)
    k = selection.num_keypoints
    total, count = np.zeros(k), np.zeros(k)
    for members, z in ((selection.pairs, pair_z), (selection.triplets, triplet_z)):
        for column in members.T:
            np.add.at(total, column, z)
            np.add.at(count, column, 1)
    return np.divide(total, count, out=np.zeros(k), where=count > 0)


def neighbour_disagreement(points, image_size, selection: MorphologySelection) -> np.ndarray:
    """(K,) mean Mahalanobis distance of the offsets p_j - p_i (normalised per axis) each
    landmark takes part in, from the training offsets' mean and covariance (floored at
    1e-10 per axis, a pixel of a 10 000 pixel image, squared)."""
    _check_review_stats(selection)
    pairs = np.asarray(selection.stats["neighbour_pairs"], dtype=np.int64).reshape(-1, 2)
    norm = normalise_points(np.asarray(points, dtype=np.float64)[None], [image_size])[0]
    d = norm[pairs[:, 1]] - norm[pairs[:, 0]] - np.asarray(selection.stats["neighbour_mean"]).reshape(-1, 2)
    xx, xy, yy = np.asarray(selection.stats["neighbour_cov"]).reshape(-1, 3).T
    xx, yy = xx + 1e-10, yy + 1e-10
    det = xx * yy - xy * xy
    z = np.sqrt(np.maximum(yy * d[:, 0] ** 2 - 2 * xy * d[:, 0] * d[:, 1] + xx * d[:, 1] ** 2, 0) / det)
    k = selection.num_keypoints
    total, count = np.zeros(k), np.zeros(k)
    for column in pairs.T:
        np.add.at(total, column, z)
        np.add.at(count, column, 1)
    return np.divide(total, count, out=np.zeros(k), where=count > 0)


def _check_review_stats(selection: MorphologySelection) -> None:
    missing = [key for key in ("pair_mean", "triplet_mean", "neighbour_pairs") if key not in selection.stats]
    if missing:
        raise ValueError(
            f"this morphology.json has no {', '.join(missing)} (written before the review scores); "
            "add them with morphology.with_review_stats and the model's training labels"
        )


def standardised(values, among) -> np.ndarray:
    """(values - mean) / SD over the entries where ``among`` is True (SD 0 -> 1)."""
    values = np.asarray(values, dtype=np.float64)
    if not among.any():
        return np.zeros_like(values)
    mean, sd = values[among].mean(), values[among].std()
    return (values - mean) / (sd if sd > 0 else 1.0)


def review_scores(
    name: str, points, confidence, logits, image_size, fixed, selection=None, expected_error=None
) -> np.ndarray:
    """Score ``name`` of one prediction, (K,); -inf at ``fixed`` points.

    ``points`` (K, 2) original pixels, ``confidence`` (K,) heatmap peaks, ``logits``
    (K, h, w) the pass's low-resolution logits, ``image_size`` (H, W), ``fixed`` (K,) bool,
    ``selection`` the model's morphology (for ``morphology`` and ``neighbours``),
    ``expected_error`` (K,) px the decoder head's (for ``decoder``; None: ``spread`` ranks).
    """
    fixed = np.asarray(fixed, dtype=bool)
    if name not in SCORES:
        raise ValueError(f"unknown review score {name!r}; expected one of {SCORES}")
    if name in NEEDS_MORPHOLOGY and selection is None:
        raise ValueError(f"the {name!r} review score needs the model folder's morphology.json")
    if name == "low-confidence":
        score = low_confidence(confidence)
    elif name == "spread" or (name == "decoder" and expected_error is None):
        score = heatmap_spread(logits, image_size)
    elif name == "spread-away":
        score = spread_away_from_fixed(heatmap_spread(logits, image_size), points, fixed)
    elif name == "decoder":
        score = np.asarray(expected_error, dtype=np.float64)
    elif name == "morphology":
        score = morphology_disagreement(points, image_size, selection)
    elif name == "neighbours":
        score = neighbour_disagreement(points, image_size, selection)
    else:
        free = ~fixed
        score = standardised(low_confidence(confidence), free) + standardised(heatmap_spread(logits, image_size), free)
    return np.where(fixed, -np.inf, score)


# ------------------------------------------------------------------ model statistics and ranking


def load_selection(model_folder) -> MorphologySelection | None:
    """The model folder's morphology selection if it has the review statistics, else None.

    Read once per file version, not once per image: every session of a model (evaluate's
    images, the browser's tabs) shares the same read-only selection.
    """
    path = None if model_folder is None else Path(model_folder) / "morphology.json"
    if path is None or not path.is_file():
        return None
    return _selection_with_review_stats(str(path.resolve()), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _selection_with_review_stats(path: str, _version: int) -> MorphologySelection | None:
    selection = MorphologySelection.load(path)
    return selection if "neighbour_pairs" in selection.stats else None


def available_score(
    requested: str | None,
    selection: MorphologySelection | None,
    review_head: bool = False,
    propagates: bool = False,
) -> str:
    """The score a session uses: ``requested``, or with None the head's score where the
    session's click decoder has a check-next head (``review_head``), else ``spread-away`` where
    a click moves other points (``propagates``: a correction field or a click decoder), else
    the default when the model's morphology allows it, else ``low-confidence``. A requested
    score the model cannot give is an error, never a silent substitute."""
    if requested is None:
        if review_head:
            return HEAD_SCORE
        if propagates:
            return PROPAGATING_SCORE
        return DEFAULT_SCORE if selection is not None or DEFAULT_SCORE not in NEEDS_MORPHOLOGY else "low-confidence"
    if requested not in SCORES:
        raise UsageError(f"unknown review score {requested!r}; expected one of {SCORES}")
    if requested == HEAD_SCORE and not review_head:
        raise UsageError(
            f"the {requested!r} review score needs a click decoder with a check-next head "
            "(click_decoder.review_members > 0 in model.json, and the decoder switched on)"
        )
    if requested in NEEDS_MORPHOLOGY and selection is None:
        raise UsageError(
            f"the {requested!r} review score needs a morphology.json with the review statistics "
            "(pair_mean, triplet_mean, neighbour_pairs) in the model folder"
        )
    return requested


def rank_for_review(prediction) -> list[int]:
    """Indices of the points not yet fixed, most suspicious (highest ``review_score``)
    first; ties keep landmark order. Fixed points are left out."""
    score = np.asarray(prediction.review_score, dtype=np.float64)
    free = np.flatnonzero(~np.asarray(prediction.fixed, dtype=bool))
    order = np.argsort(-score[free], kind="stable")
    return [int(k) for k in free[order]]
