"""A generic landmark folder: images plus one label file per image (a training set made by
``training_set.py`` is one, see the README's "Your own landmarks").

ROOT/landmarks.json ``{"names": [...], "flip_pairs": [[i, j], ...], "flip_allowed": bool}``
(only ``names`` required) or ROOT/landmarks.txt (one name per line) is the template.
Every image ROOT/<stem>.<ext> may have a label ROOT/<stem>.mrk.json (Slicer markups) or
ROOT/<stem>.csv (columns ``name,x_px,y_px``, optionally ``state``); points are matched to the
template by name. An image without a label file is not annotated yet and in no split.

A point is a label unless its state says the model placed it and nobody reviewed it
(``conventions.is_label``) or it has no position; a partly reviewed image trains on its
labels only. The held-back (``val``) images are fully reviewed ones, chosen by a seeded hash
of their names: adding images does not reshuffle the others.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from ..conventions import (
    LANDMARKS_JSON,
    POINTS_CSV,
    POINTS_JSON,
    LandmarkTemplate,
    file_stem,
    inside_image,
    is_image_name,
    is_label,
)
from ..errors import UsageError
from ..imaging import image_geometry
from ..markups import read_markups_points
from ..training_set import TrainingSetError, check_format
from .common import DatasetSplit, KeypointSample, keep_valid, record_skip, require_dir

SPLITS = ("train", "val", "all")
UNANNOTATED, PARTIAL, COMPLETE, UNREADABLE = "unannotated", "partial", "complete", "unreadable"
MIN_TRAINING_IMAGES = 2  # the shape statistics of the morphology loss need two labels


def read_template(root: Path) -> LandmarkTemplate:
    """The folder's landmark template from ``landmarks.json`` or ``landmarks.txt``."""
    check_format(root)
    path = root / LANDMARKS_JSON
    if path.is_file():
        try:
            return LandmarkTemplate.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} must be a JSON object with 'names': {e}") from None
        except ValueError as e:  # names repeated, a flip pair outside the names
            raise ValueError(f"{path}: {e}") from None
    if (root / "landmarks.txt").is_file():
        names = [line.strip() for line in (root / "landmarks.txt").read_text().splitlines() if line.strip()]
        return LandmarkTemplate(tuple(names))
    raise FileNotFoundError(f"landmark folder {root} has no landmarks.json or landmarks.txt naming the landmarks")


def list_images(root: Path) -> dict[str, Path]:
    """stem -> image path for every image file directly in ``root``."""
    images = {}
    for p in sorted(root.iterdir()):
        if p.is_file() and is_image_name(p.name):
            images.setdefault(file_stem(p), p)
    return images


def read_csv_points(path: Path) -> dict[str, tuple[tuple[float, float], str]]:
    """name -> ((x, y), state) of a CSV ``name,x_px,y_px[,state]`` (state "" when not given)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"name", "x_px", "y_px"} <= set(rows[0]):
        raise ValueError(f"{path} needs columns name,x_px,y_px; has {sorted(rows[0])}")
    try:
        return {r["name"]: ((float(r["x_px"]), float(r["y_px"])), r.get("state") or "") for r in rows}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} has a non-numeric coordinate: {e}") from None


def read_markups_by_name(path: Path, spacing, origin) -> dict[str, tuple[tuple[float, float], str]]:
    """Control points of a Slicer ``.mrk.json`` (LPS or RAS) as name -> (pixel (x, y), state);
    a point without a position has NaN coordinates."""
    markups = read_markups_points(path, spacing, origin)
    return {name: (tuple(p), state) for name, p, state in zip(markups.names, markups.points, markups.states)}


def label_path(root: Path, image: Path) -> Path | None:
    """The image's label file, or None when it has none (not annotated yet)."""
    stem = file_stem(image)
    for candidate in (stem + POINTS_JSON, stem + POINTS_CSV, image.name + POINTS_JSON, image.name + POINTS_CSV):
        if (root / candidate).is_file():
            return root / candidate
    return None


def read_labels(path: Path, template: LandmarkTemplate, spacing=(1.0, 1.0), origin=(0.0, 0.0)):
    """((K, 2) points in template order, (K,) bool: which of them are labels) of a label file."""
    by_name = read_csv_points(path) if path.name.endswith(POINTS_CSV) else read_markups_by_name(path, spacing, origin)
    missing = [n for n in template.names if n not in by_name]
    if missing:
        raise ValueError(f"{path.name} lacks landmark(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    points = np.array([by_name[n][0] for n in template.names], dtype=np.float64)
    labelled = np.array([is_label(by_name[n][1]) for n in template.names]) & np.isfinite(points).all(axis=1)
    return points, labelled


def read_points(root: Path, image: Path, template: LandmarkTemplate, spacing, origin):
    """(points, labelled) of an image; points that are not labels stand in at a place on the image."""
    path = label_path(root, image)
    if path is None:
        raise ValueError(
            f"no label file {file_stem(image)}{POINTS_JSON} or {file_stem(image)}{POINTS_CSV} for {image.name}"
        )
    return read_labels(path, template, spacing, origin)


def label_status(root: Path, image: Path, template: LandmarkTemplate) -> str:
    """unannotated (no file, or no label in it), partial, complete, or unreadable (reported when loaded)."""
    path = label_path(root, image)
    if path is None:
        return UNANNOTATED
    try:
        _, labelled = read_labels(path, template)
    except (ValueError, OSError):  # MarkupsError is a ValueError
        return UNREADABLE
    return COMPLETE if labelled.all() else PARTIAL if labelled.any() else UNANNOTATED


def hash_order(stem: str, seed: int) -> str:
    """A stem's place in the hold-back order: the same whatever other images the folder has."""
    return hashlib.sha256(f"{seed}:{stem}".encode()).hexdigest()


def split_ids(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """train / val / all over the annotated images; ``val``: max(1, round(fraction * annotated))
    fully reviewed images (fewer if fewer are complete), first in the seeded hash order."""
    root = require_dir(Path(root), "landmark folder")
    template = read_template(root)
    status = {stem: label_status(root, image, template) for stem, image in list_images(root).items()}
    annotated = sorted(stem for stem, s in status.items() if s != UNANNOTATED)
    complete = sorted((stem for stem in annotated if status[stem] == COMPLETE), key=lambda s: hash_order(s, seed))
    num_val = min(len(complete), max(1, int(round(val_fraction * len(annotated)))))
    val = set(complete[:num_val])
    return {"train": [s for s in annotated if s not in val], "val": sorted(val), "all": annotated}


def too_few_images(splits: dict[str, list[str]]) -> str | None:
    """Why a folder's images cannot be split into some to train on and some to hold back, or None."""
    annotated = len(splits["all"])
    if splits["val"] and len(splits["train"]) >= MIN_TRAINING_IMAGES:
        return None
    if not splits["val"] and annotated:
        return (
            f"none of its {annotated} annotated image(s) is fully reviewed: training holds back at least one "
            "image whose every landmark the user placed, moved or confirmed, to measure the error on"
        )
    return (
        f"it has {annotated} annotated image(s): training needs at least {MIN_TRAINING_IMAGES + 1}, one held back "
        f"to measure the error on and at least {MIN_TRAINING_IMAGES} to train on"
    )


def load(root: str | Path, split: str = "train", val_fraction: float = 0.2, seed: int = 0) -> DatasetSplit:
    if split not in SPLITS:
        raise UsageError(f"a landmark folder has splits {SPLITS}, not {split!r}")
    root = require_dir(Path(root), "landmark folder")
    template = read_template(root)
    images = list_images(root)
    splits = split_ids(root, val_fraction, seed)
    problem = too_few_images(splits) if split != "all" else None
    if problem:
        raise TrainingSetError(f"cannot train on {root}: {problem}")
    samples, skipped = [], []
    for stem in splits[split]:
        try:
            size, spacing, origin, known = image_geometry(images[stem])
            points, labelled = read_points(root, images[stem], template, spacing, origin)
        except ValueError as e:  # ImageError, MarkupsError, a landmark missing
            record_skip(skipped, "folder", stem, str(e))
            continue
        # a point that is no label stands in where it was put if that is on the image, else mid-image
        stand_in = ~labelled & ~inside_image(points, size)  # NaN is outside
        points[stand_in] = [(size[1] - 1) / 2, (size[0] - 1) / 2]
        samples.append(
            KeypointSample(
                id=stem,
                points=points,
                image_path=images[stem],
                spacing=spacing,
                spacing_known=known,
                image_size=size,
                labelled=None if labelled.all() else labelled,
            )
        )
    valid, invalid = keep_valid(samples, len(template.names), "folder")
    return DatasetSplit(
        name="folder",
        split=split,
        samples=valid,
        landmark_names=list(template.names),
        flip_pairs=list(template.flip_pairs),
        flip_allowed=template.flip_allowed,
        skipped=skipped + invalid,
    )
