"""AASCE 2019 / SpineWeb 16 (BoostNet) in its official layout.

ROOT/data/{training,test}/<name>.jpg and ROOT/labels/{training,test}/<name>.jpg.mat with key
``p2``: 68 x 2 (x, y) pixels, the 4 corners of T1..L5 in the order top-left, top-right,
bottom-left, bottom-right. No pixel spacing is published: errors stay in pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..conventions import SPINE, SPINE_CORNERS, SPINE_VERTEBRAE
from ..errors import UsageError
from .common import (
    DatasetSplit,
    KeypointSample,
    keep_valid,
    log,
    read_image_size,
    record_skip,
    require_dir,
    seeded_split,
)

VERTEBRAE, CORNERS = SPINE_VERTEBRAE, SPINE_CORNERS
NUM_KEYPOINTS = SPINE.num_keypoints  # 68
NUM_VAL = 128
FOLDERS = {"train": "training", "val": "training", "test": "test"}


def read_label(path: str | Path) -> np.ndarray:
    """The (68, 2) float (x, y) array stored under ``p2`` in a label .mat file."""
    import scipy.io  # here, not at the top: reading a training pack must work without scipy

    try:
        mat = scipy.io.loadmat(str(path))
    except (OSError, ValueError, scipy.io.matlab.MatReadError) as e:
        raise ValueError(f"cannot read label file {path}: {e}") from None
    if "p2" not in mat:
        raise ValueError(f"label file {path} has no 'p2' array")
    return np.asarray(mat["p2"], dtype=np.float64)  # stored as uint16: cast before any arithmetic


def vertebra_order_problem(points: np.ndarray) -> str | None:
    """Why a 68-point label is not T1..L5 top to bottom with each vertebra's corners in place
    (the dataset's known errors: swapped endplates, missing or extra vertebrae), or None."""
    corners = np.asarray(points, dtype=np.float64).reshape(len(VERTEBRAE), len(CORNERS), 2)
    x, y = corners[..., 0], corners[..., 1]
    # same-side comparisons only: a tilted vertebra may have its top-left below its bottom-right
    for bad, what in (
        ((y[:, 0] >= y[:, 2]) | (y[:, 1] >= y[:, 3]), "top corners not above its bottom corners"),
        ((x[:, 0] >= x[:, 1]) | (x[:, 2] >= x[:, 3]), "left corners not left of its right corners"),
    ):
        if bad.any():
            return f"{VERTEBRAE[int(np.flatnonzero(bad)[0])]}: {what}"
    not_below = np.flatnonzero(np.diff(y.mean(axis=1)) <= 0)
    if not_below.size:
        v = int(not_below[0]) + 1
        return f"{VERTEBRAE[v]} is not below {VERTEBRAE[v - 1]} (vertebrae out of order)"
    return None


def image_names(root: str | Path, folder: str = "training") -> list[str]:
    images = require_dir(Path(root) / "data" / folder, f"AASCE '{folder}' images")
    return sorted(p.name for p in images.glob("*.jpg"))


def split_ids(root: str | Path, num_val: int = NUM_VAL, seed: int = 0) -> dict[str, list[str]]:
    """Image names per split: train/val from the training folder (seeded), test if present."""
    splits = seeded_split(image_names(root, "training"), num_val, seed)
    if (Path(root) / "data" / "test").is_dir():
        splits["test"] = image_names(root, "test")
    return splits


def load(
    root: str | Path, split: str = "train", num_val: int = NUM_VAL, seed: int = 0, drop_disordered: bool = False
) -> DatasetSplit:
    """The valid samples of one split; unreadable or invalid labels are reported in ``skipped``.

    Labels whose vertebrae are out of order (:func:`vertebra_order_problem`) are kept and
    counted in one warning, so that evaluation stays on the protocol's images; with
    ``drop_disordered`` they are skipped and reported like the invalid ones."""
    if split not in FOLDERS:
        raise UsageError(f"AASCE has splits {sorted(FOLDERS)}, not {split!r}")
    root = Path(root)
    folder = FOLDERS[split]
    if split == "test":
        require_dir(root / "data" / "test", "AASCE test split (the official test images are distributed separately)")
        names = image_names(root, "test")
    else:
        names = split_ids(root, num_val, seed)[split]
    labels = require_dir(root / "labels" / folder, f"AASCE '{folder}' labels")
    samples, unreadable = [], []
    for name in names:
        image_path = root / "data" / folder / name
        try:
            points = read_label(labels / f"{name}.mat")
            size = read_image_size(image_path)
        except (ValueError, FileNotFoundError) as e:
            record_skip(unreadable, "AASCE", name, str(e))
            continue
        samples.append(KeypointSample(id=name, points=points, image_path=image_path, image_size=size))
    valid, skipped = keep_valid(samples, NUM_KEYPOINTS, "AASCE")
    disordered = {s.id: reason for s in valid if (reason := vertebra_order_problem(s.points))}
    if drop_disordered:
        for sample_id, reason in disordered.items():
            record_skip(skipped, "AASCE", sample_id, reason)
        valid = [s for s in valid if s.id not in disordered]
    elif disordered:
        first = next(iter(disordered.items()))
        log.warning(
            "AASCE %s: keeping %d label(s) with vertebrae out of order (first: %s: %s)",
            split,
            len(disordered),
            *first,
        )
    return DatasetSplit(
        name="aasce",
        split=split,
        samples=valid,
        landmark_names=list(SPINE.names),
        flip_pairs=list(SPINE.flip_pairs),
        flip_allowed=SPINE.flip_allowed,
        skipped=unreadable + skipped,
    )
