"""A generic landmark folder: images plus one label file per image.

ROOT/landmarks.json ``{"names": [...], "flip_pairs": [[i, j], ...], "flip_allowed": bool}``
(only ``names`` required) or ROOT/landmarks.txt (one name per line) is the template.
Every image ROOT/<stem>.<ext> has a label ROOT/<stem>.mrk.json (Slicer markups) or
ROOT/<stem>.csv (columns ``name,x_px,y_px``); points are matched to the template by name.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..conventions import POINTS_CSV, POINTS_JSON, LandmarkTemplate, file_stem, is_image_name
from ..imaging import image_geometry
from ..markups import read_markups_points
from .common import DatasetSplit, KeypointSample, keep_valid, record_skip, require_dir, seeded_split

SPLITS = ("train", "val", "all")


def read_template(root: Path) -> LandmarkTemplate:
    """The folder's landmark template from ``landmarks.json`` or ``landmarks.txt``."""
    path = root / "landmarks.json"
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


def read_csv_points(path: Path) -> dict[str, tuple[float, float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"name", "x_px", "y_px"} <= set(rows[0]):
        raise ValueError(f"{path} needs columns name,x_px,y_px; has {sorted(rows[0])}")
    try:
        return {r["name"]: (float(r["x_px"]), float(r["y_px"])) for r in rows}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} has a non-numeric coordinate: {e}") from None


def read_markups_by_name(path: Path, spacing, origin) -> dict[str, tuple[float, float]]:
    """Control points of a Slicer ``.mrk.json`` (LPS or RAS) as pixel (x, y), by label."""
    markups = read_markups_points(path, spacing, origin)
    return {name: tuple(p) for name, p in zip(markups.names, markups.points)}


def label_path(root: Path, image: Path) -> Path:
    stem = file_stem(image)
    for candidate in (stem + POINTS_JSON, stem + POINTS_CSV, image.name + POINTS_JSON, image.name + POINTS_CSV):
        if (root / candidate).is_file():
            return root / candidate
    raise ValueError(f"no label file {stem}{POINTS_JSON} or {stem}{POINTS_CSV} for {image.name}")


def read_points(root: Path, image: Path, template: LandmarkTemplate, spacing, origin) -> np.ndarray:
    path = label_path(root, image)
    by_name = read_csv_points(path) if path.name.endswith(POINTS_CSV) else read_markups_by_name(path, spacing, origin)
    missing = [n for n in template.names if n not in by_name]
    if missing:
        raise ValueError(f"{path.name} lacks landmark(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return np.array([by_name[n] for n in template.names], dtype=np.float64)


def split_ids(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    stems = list(list_images(require_dir(Path(root), "landmark folder")))
    splits = seeded_split(stems, int(round(val_fraction * len(stems))), seed)
    splits["all"] = sorted(stems)
    return splits


def load(root: str | Path, split: str = "train", val_fraction: float = 0.2, seed: int = 0) -> DatasetSplit:
    if split not in SPLITS:
        raise ValueError(f"a landmark folder has splits {SPLITS}, not {split!r}")
    root = require_dir(Path(root), "landmark folder")
    template = read_template(root)
    images = list_images(root)
    samples, skipped = [], []
    for stem in split_ids(root, val_fraction, seed)[split]:
        try:
            size, spacing, origin, known = image_geometry(images[stem])
            points = read_points(root, images[stem], template, spacing, origin)
        except ValueError as e:
            record_skip(skipped, "folder", stem, str(e))
            continue
        samples.append(
            KeypointSample(
                id=stem, points=points, image_path=images[stem], spacing=spacing, spacing_known=known, image_size=size
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
