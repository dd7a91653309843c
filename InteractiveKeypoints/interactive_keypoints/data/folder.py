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

from ..markups import read_markups_points
from .common import DatasetSplit, KeypointSample, image_geometry, keep_valid, record_skip, require_dir, seeded_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")
# readers that turn a print resolution (DPI) into spacing: no detector spacing (as in imaging.py)
SPLITS = ("train", "val", "all")


class LabelTemplate:
    """Landmark names (and optional flip metadata) that every label file must provide."""

    def __init__(self, names, flip_pairs=(), flip_allowed: bool | None = None):
        self.names = [str(n) for n in names]
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError("landmark template needs a non-empty list of distinct names")
        self.flip_pairs = [tuple(int(i) for i in p) for p in flip_pairs]
        # mirroring without left/right pairs is only right when the user says so
        self.flip_allowed = bool(self.flip_pairs) if flip_allowed is None else bool(flip_allowed)

    @classmethod
    def read(cls, root: Path) -> "LabelTemplate":
        if (root / "landmarks.json").is_file():
            try:
                d = json.loads((root / "landmarks.json").read_text())
                return cls(d["names"], d.get("flip_pairs", ()), d.get("flip_allowed"))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{root / 'landmarks.json'} must be a JSON object with 'names': {e}") from None
        if (root / "landmarks.txt").is_file():
            return cls([line.strip() for line in (root / "landmarks.txt").read_text().splitlines() if line.strip()])
        raise FileNotFoundError(f"landmark folder {root} has no landmarks.json or landmarks.txt naming the landmarks")


def image_stem(path: Path) -> str:
    name = path.name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def list_images(root: Path) -> dict[str, Path]:
    """stem -> image path for every image file directly in ``root``."""
    images = {}
    for p in sorted(root.iterdir()):
        if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS):
            images.setdefault(image_stem(p), p)
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
    stem = image_stem(image)
    for candidate in (f"{stem}.mrk.json", f"{stem}.csv", f"{image.name}.mrk.json", f"{image.name}.csv"):
        if (root / candidate).is_file():
            return root / candidate
    raise ValueError(f"no label file {stem}.mrk.json or {stem}.csv for {image.name}")


def read_points(root: Path, image: Path, template: LabelTemplate, spacing, origin) -> np.ndarray:
    path = label_path(root, image)
    by_name = read_csv_points(path) if path.suffix == ".csv" else read_markups_by_name(path, spacing, origin)
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
    template = LabelTemplate.read(root)
    images = list_images(root)
    samples, skipped = [], []
    for stem in split_ids(root, val_fraction, seed)[split]:
        try:
            size, spacing, origin, known = image_geometry(images[stem])
            points = read_points(root, images[stem], template, spacing, origin)
        except ValueError as e:
            record_skip(skipped, "folder", stem, str(e))
            continue
        samples.append(KeypointSample(id=stem, points=points, image_path=images[stem], spacing=spacing,
                                      spacing_known=known, image_size=size))
    valid, invalid = keep_valid(samples, len(template.names), "folder")
    return DatasetSplit(name="folder", split=split, samples=valid, landmark_names=template.names,
                        flip_pairs=template.flip_pairs, flip_allowed=template.flip_allowed, skipped=skipped + invalid)
