"""ISBI 2015 cephalometric landmarks in the official layout.

ROOT/RawImage/{TrainingData,Test1Data,Test2Data}/NNN.(bmp|jpg) and
ROOT/AnnotationsByMD/400_{senior,junior}/NNN.txt: 19 lines ``x,y`` (official files may carry
further lines after them). Ground truth = mean of the two doctors; 0.1 mm per pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..conventions import CEPH
from ..errors import UsageError
from .common import DatasetSplit, KeypointSample, keep_valid, read_image_size, record_skip, require_dir

NUM_KEYPOINTS = CEPH.num_keypoints  # 19
SPACING = (0.1, 0.1)
IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".png")
# split -> (image folder, first id, last id)
SPLITS = {
    "train": ("TrainingData", 1, 150),
    "val": ("Test1Data", 151, 300),
    "test1": ("Test1Data", 151, 300),
    "test2": ("Test2Data", 301, 400),
}
ANNOTATORS = ("senior", "junior")


def read_annotation(path: str | Path) -> np.ndarray:
    """The first 19 ``x,y`` lines of one doctor's file as (19, 2) float; later lines are ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read annotation {path}: {e.strerror or e}") from None
    if len(lines) < NUM_KEYPOINTS:
        raise ValueError(f"annotation {path} has {len(lines)} lines, expected at least {NUM_KEYPOINTS}")
    points = []
    for number, line in enumerate(lines[:NUM_KEYPOINTS], start=1):
        fields = line.strip().split(",")
        try:
            if len(fields) != 2:
                raise ValueError
            points.append([float(fields[0]), float(fields[1])])
        except ValueError:
            raise ValueError(f"annotation {path} line {number} is not 'x,y': {line!r}") from None
    return np.array(points)


def find_image(folder: Path, stem: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    raise ValueError(f"no image {stem}{{{','.join(IMAGE_EXTENSIONS)}}} in {folder}")


def split_ids(split: str) -> list[str]:
    if split not in SPLITS:
        raise UsageError(f"ISBI 2015 has splits {sorted(SPLITS)}, not {split!r}")
    _, first, last = SPLITS[split]
    return [f"{i:03d}" for i in range(first, last + 1)]


def load(root: str | Path, split: str = "train", annotators=ANNOTATORS) -> DatasetSplit:
    """The valid samples of one split, labels averaged over ``annotators``."""
    ids = split_ids(split)
    root = Path(root)
    images = require_dir(root / "RawImage" / SPLITS[split][0], f"ISBI 2015 split {split!r}")
    annotation_dirs = [
        require_dir(root / "AnnotationsByMD" / f"400_{a}", f"ISBI 2015 {a} annotations") for a in annotators
    ]
    samples, skipped = [], []
    for stem in ids:
        try:
            points = np.mean([read_annotation(d / f"{stem}.txt") for d in annotation_dirs], axis=0)
            image_path = find_image(images, stem)
            size = read_image_size(image_path)
        except ValueError as e:
            record_skip(skipped, "ISBI 2015", stem, str(e))
            continue
        samples.append(
            KeypointSample(
                id=stem, points=points, image_path=image_path, spacing=SPACING, spacing_known=True, image_size=size
            )
        )
    valid, invalid = keep_valid(samples, NUM_KEYPOINTS, "ISBI 2015")
    return DatasetSplit(
        name="isbi",
        split=split,
        samples=valid,
        landmark_names=list(CEPH.names),
        flip_pairs=list(CEPH.flip_pairs),
        flip_allowed=CEPH.flip_allowed,
        skipped=skipped + invalid,
    )
