"""Records, label validation, image reading and seeded splits shared by the dataset loaders.

Points are (x, y) = (column, row) in original-image pixels (see :mod:`..conventions`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..conventions import inside_image
from ..errors import KeypointsError
from ..imaging import image_geometry, load_radiograph

log = logging.getLogger(__name__)


class DatasetNotFoundError(KeypointsError, FileNotFoundError):
    """A dataset folder (or one split of it) that is not on disk."""


@dataclass
class KeypointSample:
    """One labelled radiograph: a file on disk or an in-memory image (phantoms)."""

    id: str
    points: np.ndarray  # (K, 2) float64, (x, y) in original pixels
    image_path: Path | None = None
    spacing: tuple[float, float] = (1.0, 1.0)  # (sx, sy) mm per pixel
    spacing_known: bool = False
    image_size: tuple[int, int] | None = None  # (H, W) of the original image
    image: np.ndarray | None = None  # (H, W) grey, only for in-memory datasets
    # a training pack's image, already normalised and resized: (h, w) float32 at any size of
    # the original's aspect, and the ModelConfig ``intensity`` it was normalised with
    cache_image: np.ndarray | None = None
    cache_intensity: dict | None = None
    # (K,) bool: which points are labels (a partly reviewed image of a training set); None: all.
    # The other points hold a stand-in position inside the image and never reach the loss.
    labelled: np.ndarray | None = None

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64)
        if self.labelled is not None:
            self.labelled = np.asarray(self.labelled, dtype=bool).reshape(-1)
        self.spacing = (float(self.spacing[0]), float(self.spacing[1]))
        if self.image is not None and self.image_size is None:
            self.image_size = tuple(int(v) for v in np.shape(self.image)[:2])


@dataclass
class DatasetSplit:
    """The valid samples of one split plus the landmark metadata training needs."""

    name: str
    split: str
    samples: list[KeypointSample]
    landmark_names: list[str]
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    # a horizontal flip is only a valid augmentation when the anatomy has a mirror image
    # (AP spine yes; a lateral cephalogram would face the other way)
    flip_allowed: bool = True
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> KeypointSample:
        return self.samples[i]

    @property
    def num_keypoints(self) -> int:
        return len(self.landmark_names)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def points_array(self) -> np.ndarray:
        """(N, K, 2) labels in original pixels."""
        return np.stack([s.points for s in self.samples]) if self.samples else np.zeros((0, self.num_keypoints, 2))

    def image_sizes(self) -> np.ndarray:
        """(N, 2) original (H, W) of every sample."""
        return np.array([s.image_size for s in self.samples], dtype=np.float64).reshape(-1, 2)

    def complete(self) -> DatasetSplit:
        """The samples whose every point is a label (a training set's fully reviewed images)."""
        kept = [s for s in self.samples if s.labelled is None or s.labelled.all()]
        return DatasetSplit(self.name, self.split, kept, self.landmark_names, self.flip_pairs, self.flip_allowed)


def label_problem(
    points: np.ndarray, num_keypoints: int, image_size: tuple[int, int] | None, labelled=None
) -> str | None:
    """Why a label cannot be used (wrong count, NaN/inf, outside the image), or None if fine.
    ``labelled`` (K,) bool: only these points are checked (the others never reach the loss)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        return f"points have shape {points.shape}, expected ({num_keypoints}, 2)"
    if points.shape[0] != num_keypoints:
        return f"{points.shape[0]} points, expected {num_keypoints}"
    if labelled is not None:
        if not np.any(labelled):
            return "no point is a label (none placed, moved or confirmed by the user)"
        points = np.where(np.asarray(labelled, dtype=bool)[:, None], points, 0.0)
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        return f"non-finite coordinates at keypoint(s) {np.flatnonzero(bad).tolist()}"
    if image_size is not None:
        h, w = image_size
        outside = ~inside_image(points, image_size)
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            return (
                f"{int(outside.sum())} point(s) outside the {w} x {h} image, "
                f"first keypoint {k} at ({points[k, 0]:g}, {points[k, 1]:g})"
            )
    return None


def keep_valid(
    samples: list[KeypointSample], num_keypoints: int, dataset: str
) -> tuple[list[KeypointSample], list[tuple[str, str]]]:
    """Split samples into usable ones and (id, reason) for the rest, logging each skip."""
    valid, skipped = [], []
    for s in samples:
        reason = label_problem(s.points, num_keypoints, s.image_size, s.labelled)
        if reason is None:
            valid.append(s)
        else:
            record_skip(skipped, dataset, s.id, reason)
    return valid, skipped


def record_skip(skipped: list[tuple[str, str]], dataset: str, sample_id: str, reason: str) -> None:
    skipped.append((sample_id, reason))
    log.warning("%s: skipping %s: %s", dataset, sample_id, reason)


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header only: no pixel decoding."""
    return image_geometry(path)[0]


def load_grey_image(sample: KeypointSample) -> np.ndarray:
    """The sample's image as (H, W) float32 grey in original pixels."""
    source = sample.image if sample.image is not None else sample.image_path
    return np.asarray(load_radiograph(source).array, dtype=np.float32)


def seeded_split(ids: list[str], num_val: int, seed: int = 0) -> dict[str, list[str]]:
    """Pick num_val ids for validation with a seeded RNG; both lists sorted.

    The ids are sorted first, so the split depends only on the set of files and the seed.
    """
    ids = sorted(ids)
    if not 0 <= num_val <= len(ids):
        raise ValueError(f"cannot take {num_val} validation images from {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    val = {ids[i] for i in order[:num_val]}
    return {"train": [i for i in ids if i not in val], "val": [i for i in ids if i in val]}


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFoundError(f"{what}: folder {path} is missing")
    return path
