"""Morphology-aware loss: which distances and angles to constrain, and the loss itself.

Selection (paper eq. 2-3): over the training labels, normalised per axis (x / W, y / H),
the standard deviation of every pairwise distance and the circular standard deviation
S = sqrt(-ln(R^2)) of every angle (a, vertex, b) between the rays vertex->a and vertex->b.
The selected relations' means, and each landmark's steadiest neighbour offsets, are recorded
too (see :func:`review_statistics`), for the review scores that compare a prediction with
the typical shape.
The least variable ones ("low", the paper) are the anatomy's stable relations; "high",
"adjacent" (each vertebra's edges and corner angles) and "off" are ablations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from .errors import UsageError

VARIANTS = ("low", "high", "adjacent", "off")
FORMAT_VERSION = 1


@dataclass
class MorphologySelection:
    pairs: np.ndarray  # (P, 2) int keypoint indices (i, j)
    triplets: np.ndarray  # (T, 3) int (a, vertex, b)
    variant: str = "low"
    num_keypoints: int = 0
    stats: dict = field(default_factory=dict)  # pair_std, triplet_std of the selected, num_images...

    def __post_init__(self):
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.triplets = np.asarray(self.triplets, dtype=np.int64).reshape(-1, 3)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown morphology variant {self.variant!r}; expected one of {VARIANTS}")
        top = max(self.pairs.max(initial=-1), self.triplets.max(initial=-1))
        if self.pairs.min(initial=0) < 0 or self.triplets.min(initial=0) < 0 or top >= max(self.num_keypoints, 1):
            raise ValueError(f"morphology indices outside 0..{self.num_keypoints - 1}")

    @property
    def empty(self) -> bool:
        return len(self.pairs) == 0 and len(self.triplets) == 0

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "variant": self.variant,
            "num_keypoints": self.num_keypoints,
            "pairs": self.pairs.tolist(),
            "triplets": self.triplets.tolist(),
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, d: dict) -> MorphologySelection:
        if d.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"morphology format_version {d['format_version']} is newer than this code")
        try:
            return cls(
                pairs=d["pairs"],
                triplets=d["triplets"],
                variant=d["variant"],
                num_keypoints=int(d["num_keypoints"]),
                stats=d.get("stats", {}),
            )
        except KeyError as e:
            raise ValueError(f"morphology selection has no {e.args[0]!r}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> MorphologySelection:
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ValueError(f"no morphology selection at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"morphology selection {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)


# ------------------------------------------------------------------- statistics


def normalise_points(points, sizes) -> np.ndarray:
    """(N, K, 2) pixel (x, y) -> (x / W, y / H); ``sizes`` (N, 2) as (H, W) per image."""
    points = np.asarray(points, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    return points / sizes[:, None, ::-1]


def all_pairs(num_keypoints: int) -> np.ndarray:
    return np.array(list(combinations(range(num_keypoints), 2)), dtype=np.int64).reshape(-1, 2)


def all_triplets(num_keypoints: int) -> np.ndarray:
    """Every (a, vertex, b) with a < b, both different from the vertex: K * C(K-1, 2) rows."""
    rows = [
        (a, v, b) for v in range(num_keypoints) for a, b in combinations([k for k in range(num_keypoints) if k != v], 2)
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def distance_std(points_norm, pairs) -> np.ndarray:
    """Standard deviation over images of each pair's distance, (P,)."""
    p = np.asarray(points_norm, dtype=np.float64)
    d = np.linalg.norm(p[:, pairs[:, 0]] - p[:, pairs[:, 1]], axis=-1)
    return d.std(axis=0)


def ray_angles(points, triplets):
    """Signed angle from ray vertex->a to ray vertex->b, (..., T). Works on numpy and torch."""
    a, v, b = (points[..., triplets[:, i], :] for i in range(3))
    u, w = a - v, b - v
    dot = u[..., 0] * w[..., 0] + u[..., 1] * w[..., 1]
    cross = u[..., 0] * w[..., 1] - u[..., 1] * w[..., 0]
    return dot, cross


def angle_circular_std(points_norm, triplets, chunk: int = 20000) -> np.ndarray:
    """Circular standard deviation sqrt(-ln(R^2)) of each triplet's angle over images, (T,).

    Chunked over triplets: K = 68 has ~150k triplets, times hundreds of images.
    """
    p = np.asarray(points_norm, dtype=np.float64)
    out = np.empty(len(triplets))
    for start in range(0, len(triplets), chunk):
        dot, cross = ray_angles(p, triplets[start : start + chunk])
        theta = np.arctan2(cross, dot)
        r = np.hypot(np.cos(theta).mean(axis=0), np.sin(theta).mean(axis=0))
        out[start : start + chunk] = np.sqrt(-np.log(np.clip(r, 1e-12, 1.0) ** 2))
    return out


def relation_means(points_norm, pairs, triplets) -> tuple[np.ndarray, np.ndarray]:
    """Mean over images of each pair's distance (P,) and circular mean of each triplet's
    signed angle in radians (T,): the typical shape that review scores compare a
    prediction with (see :mod:`.review`)."""
    p = np.asarray(points_norm, dtype=np.float64)
    pairs, triplets = np.asarray(pairs).reshape(-1, 2), np.asarray(triplets).reshape(-1, 3)
    pair_mean = np.linalg.norm(p[:, pairs[:, 0]] - p[:, pairs[:, 1]], axis=-1).mean(axis=0)
    dot, cross = ray_angles(p, triplets)
    theta = np.arctan2(cross, dot)
    triplet_mean = np.arctan2(np.sin(theta).mean(axis=0), np.cos(theta).mean(axis=0))
    return pair_mean.reshape(len(pairs)), triplet_mean.reshape(len(triplets))


NEIGHBOURS = 6  # steadiest partners per landmark in the review statistics


def neighbour_offsets(points_norm, per_landmark: int = NEIGHBOURS) -> dict:
    """Review statistics that cover every landmark: for each, the ``per_landmark`` others
    whose offset to it varies least over the training labels (N, K, 2, normalised); the
    union of those pairs (i < j) with the mean (2,) and covariance (xx, xy, yy) of the
    offset p_j - p_i. The loss's selection alone can leave a landmark with one weak
    relation; this gives each several local ones."""
    p = np.asarray(points_norm, dtype=np.float64)
    k = p.shape[1]
    offsets = p[:, None, :, :] - p[:, :, None, :]  # (N, K, K, 2): p_j - p_i
    spread = offsets.var(axis=0).sum(-1)
    np.fill_diagonal(spread, np.inf)
    partners = np.argsort(spread, axis=1, kind="stable")[:, : min(per_landmark, k - 1)]
    pairs = sorted({(min(i, j), max(i, j)) for i in range(k) for j in partners[i]})
    pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    d = offsets[:, pairs[:, 0], pairs[:, 1]]  # (N, P, 2)
    centred = d - d.mean(0)
    cov = np.stack(
        [(centred[..., 0] ** 2).mean(0), (centred[..., 0] * centred[..., 1]).mean(0), (centred[..., 1] ** 2).mean(0)],
        axis=-1,
    )
    return {"neighbour_pairs": pairs.tolist(), "neighbour_mean": d.mean(0).tolist(), "neighbour_cov": cov.tolist()}


def review_statistics(points_norm, pairs, triplets) -> dict:
    """The stats that the review scores (:mod:`.review`) read: the selected relations'
    means and every landmark's steadiest neighbour offsets."""
    pair_mean, triplet_mean = relation_means(points_norm, pairs, triplets)
    return dict(pair_mean=pair_mean.tolist(), triplet_mean=triplet_mean.tolist(), **neighbour_offsets(points_norm))


def with_review_stats(selection: MorphologySelection, points, sizes) -> MorphologySelection:
    """The same selection with the review statistics of training labels ``points`` (N, K, 2)
    original pixels, ``sizes`` (N, 2) (H, W) added to its stats: for model folders written
    before they were recorded."""
    stats = dict(
        selection.stats, **review_statistics(normalise_points(points, sizes), selection.pairs, selection.triplets)
    )
    return MorphologySelection(selection.pairs, selection.triplets, selection.variant, selection.num_keypoints, stats)


def vertebra_quads(num_keypoints: int) -> np.ndarray:
    """(V, 4) corner indices (top-left, top-right, bottom-left, bottom-right) per vertebra."""
    if num_keypoints % 4:
        raise UsageError(
            f"the 'adjacent' morphology variant needs 4 corners per vertebra in AASCE order "
            f"(K divisible by 4); got K = {num_keypoints}. Use 'low', 'high' or 'off'."
        )
    return np.arange(num_keypoints).reshape(-1, 4)


def adjacent_relations(num_keypoints: int) -> tuple[np.ndarray, np.ndarray]:
    """Each vertebra's 4 edges and 4 internal corner angles."""
    pairs, triplets = [], []
    for tl, tr, bl, br in vertebra_quads(num_keypoints):
        ring = [tl, tr, br, bl]  # walk around the quadrilateral
        for i in range(4):
            prev, vertex, nxt = ring[i - 1], ring[i], ring[(i + 1) % 4]
            pairs.append(sorted((vertex, nxt)))
            triplets.append((prev, vertex, nxt))
    return np.array(pairs), np.array(triplets)


def _pick(std: np.ndarray, count: int | None, threshold: float | None, highest: bool) -> np.ndarray:
    """Indices of the ``count`` least (or most) variable, or all under ``threshold``."""
    order = np.argsort(-std if highest else std, kind="stable")
    if threshold is not None:
        keep = std[order] >= threshold if highest else std[order] <= threshold
        return order[keep]
    return order[: min(count, len(order))]


def select_morphology(
    points,
    sizes,
    variant: str = "low",
    n_pairs: int = 70,
    n_triplets: int = 70,
    distance_threshold: float | None = None,
    angle_threshold: float | None = None,
) -> MorphologySelection:
    """Choose the constrained pairs and triplets from training labels.

    ``points`` (N, K, 2) original pixels, ``sizes`` (N, 2) (H, W). Thresholds, when given,
    replace the counts (keep all with std <= threshold; >= for "high").
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown morphology variant {variant!r}; expected one of {VARIANTS}")
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[-1] != 2 or len(points) < 2:
        raise ValueError(f"need (N >= 2, K, 2) training labels, got shape {points.shape}")
    num_images, k = points.shape[:2]
    base = {"num_images": int(num_images), "normalisation": "x / W, y / H"}
    norm = normalise_points(points, sizes)
    if variant == "off":  # no loss term, but the review scores still get their statistics
        none_p, none_t = np.zeros((0, 2), np.int64), np.zeros((0, 3), np.int64)
        return MorphologySelection(none_p, none_t, "off", k, dict(base, **review_statistics(norm, none_p, none_t)))
    if variant == "adjacent":
        pairs, triplets = adjacent_relations(k)
        pair_std, triplet_std = distance_std(norm, pairs), angle_circular_std(norm, triplets)
    else:
        pairs, triplets = all_pairs(k), all_triplets(k)
        pair_std, triplet_std = distance_std(norm, pairs), angle_circular_std(norm, triplets)
        highest = variant == "high"
        keep_p = _pick(pair_std, n_pairs, distance_threshold, highest)
        keep_t = _pick(triplet_std, n_triplets, angle_threshold, highest)
        pairs, pair_std, triplets, triplet_std = pairs[keep_p], pair_std[keep_p], triplets[keep_t], triplet_std[keep_t]
    stats = dict(
        base, pair_std=pair_std.tolist(), triplet_std=triplet_std.tolist(), **review_statistics(norm, pairs, triplets)
    )
    return MorphologySelection(pairs, triplets, variant, k, stats)


# ------------------------------------------------------------------------- loss


def morphology_loss(pred, true, selection: MorphologySelection, eps: float = 1e-8):
    """(L_d, L_a) for (B, K, 2) coordinates normalised per axis (x / W, y / H).

    L_d: mean L1 between predicted and true pair distances. L_a: mean of 1 - cos(angle
    difference), i.e. 1 - cosine similarity of the (cos, sin) unit vectors of the angle between
    the two rays. Both are 0 with an empty selection. ``eps`` keeps gradients finite when two
    points coincide.
    """
    zero = pred.sum() * 0.0
    loss_d = loss_a = zero
    if len(selection.pairs):
        pairs = torch.as_tensor(selection.pairs, device=pred.device)

        def distances(p):
            diff = p[:, pairs[:, 0]] - p[:, pairs[:, 1]]
            return torch.sqrt((diff * diff).sum(-1) + eps * eps)

        loss_d = (distances(pred) - distances(true)).abs().mean()
    if len(selection.triplets):
        triplets = torch.as_tensor(selection.triplets, device=pred.device)

        def unit_angle(p):
            dot, cross = ray_angles(p, triplets)  # |u||w| (cos, sin)
            norm = torch.sqrt(dot * dot + cross * cross + eps * eps)
            return dot / norm, cross / norm

        (cp, sp), (ct, st) = unit_angle(pred), unit_angle(true)
        loss_a = (1.0 - (cp * ct + sp * st)).mean()
    return loss_d, loss_a
