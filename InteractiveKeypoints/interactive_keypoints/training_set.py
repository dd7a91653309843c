"""A training set of the user's own landmarks: a landmark folder (:mod:`.data.folder`) that the
Slicer module, the browser app and the command line add annotated images to.

    SET/landmarks.json       the template: names in channel order, optional left/right pairs
    SET/training_set.json    format and version, and per added image its pixels' SHA-256
    SET/<stem>.<ext>         an image (added ones are written as <stem>.nrrd, as the model saw them)
    SET/<stem>.mrk.json      its Slicer point list, each point's state in its description
    SET/models/<set>-NN/     the models trained on it (normal model folders with a card)

An image without a point list is not annotated yet ("Annotate next" ranks those). Only points
the user placed, moved or confirmed are labels (``conventions.is_label``). numpy, SimpleITK and
the markups writer only: the Slicer module's main thread adds images without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from . import __version__
from .conventions import (
    LANDMARKS_JSON,
    POINTS_JSON,
    TRAINING_SET_FORMAT,
    TRAINING_SET_FORMAT_VERSION,
    TRAINING_SET_JSON,
    LandmarkTemplate,
    file_stem,
    is_image_name,
    write_text_atomic,
)
from .errors import KeypointsError

MODELS_FOLDER = "models"
ADDED_IMAGE_SUFFIX = ".nrrd"  # float32 grey with its spacing: exactly what the model saw
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SIDES = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


class TrainingSetError(KeypointsError, ValueError):
    """A training set that cannot take this (another version's folder, too few images, ...)."""


class TemplateMismatchError(TrainingSetError):
    """A point list whose landmarks are not the training set's."""


class AlreadyAddedError(TrainingSetError):
    """The image is in the training set already; ``replace=True`` replaces its points."""


# ------------------------------------------------------------------ the record


def check_format(folder: Path) -> dict | None:
    """The set's record, or None for a plain landmark folder; refuses one written by a newer version."""
    path = Path(folder) / TRAINING_SET_JSON
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        fmt, version = record["format"], int(record["format_version"])
    except (ValueError, KeyError, TypeError) as e:
        raise TrainingSetError(f"{path} is not a training-set record ({e!r}); nothing was changed") from None
    if fmt != TRAINING_SET_FORMAT:
        raise TrainingSetError(f"{path} says format {fmt!r}, not {TRAINING_SET_FORMAT!r}; nothing was changed")
    if version > TRAINING_SET_FORMAT_VERSION:
        raise TrainingSetError(
            f"{folder} was written by a newer version of InteractiveKeypoints (training-set format {version}; "
            f"this one reads up to {TRAINING_SET_FORMAT_VERSION}): update InteractiveKeypoints to use it; "
            "nothing was changed"
        )
    record.setdefault("images", {})
    return record


def _write_json(path: Path, content) -> None:
    """Written beside, then renamed: a crash never leaves half a file over the user's work."""
    write_text_atomic(path, json.dumps(content, indent=1) + "\n")


def read_template(folder: Path) -> LandmarkTemplate | None:
    path = Path(folder) / LANDMARKS_JSON
    if not path.is_file():
        return None
    try:
        return LandmarkTemplate.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise TrainingSetError(f"{path} is not a landmark template: {e}") from None


def create_training_set(folder, template: LandmarkTemplate) -> Path:
    """Make ``folder`` a training set of ``template`` (also an existing folder of images); a
    folder that is one already must have the same template."""
    folder = Path(folder)
    record = check_format(folder)
    existing = read_template(folder)
    if existing is not None and existing.names != template.names:
        raise TemplateMismatchError(
            f"{folder} is a training set of other landmarks ({len(existing.names)}: {', '.join(existing.names[:4])}"
            f"{', ...' if len(existing.names) > 4 else ''}); choose another folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    if existing is None:
        _write_json(folder / LANDMARKS_JSON, template.to_json())
    if record is None:
        _write_json(folder / TRAINING_SET_JSON, new_record())
    return folder


def new_record() -> dict:
    return {
        "format": TRAINING_SET_FORMAT,
        "format_version": TRAINING_SET_FORMAT_VERSION,
        "created_with": f"interactive-keypoints {__version__}",
        "images": {},
    }


# ------------------------------------------------------------------ templates


def mirrored_name(name: str) -> str | None:
    """``left ear`` -> ``right ear``, ``T1-top-left`` -> ``T1-top-right``; None without a side."""
    parts = re.split(r"([^A-Za-z]+)", name)
    sides = [i for i, part in enumerate(parts) if part in _SIDES]
    if len(sides) != 1:
        return None
    parts[sides[0]] = _SIDES[parts[sides[0]]]
    return "".join(parts)


def template_from_names(names, flip_pairs=None) -> LandmarkTemplate:
    """A template from a point list's labels (placed by hand on a first image); left/right
    pairs found by name (``left X`` / ``right X``) unless given."""
    names = [str(n).strip() for n in names]
    empty = [i + 1 for i, n in enumerate(names) if not n]
    if empty:
        raise TemplateMismatchError(f"point(s) {empty} have no name: name every landmark of the first image")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise TemplateMismatchError(f"landmark name(s) used twice: {', '.join(repeated)}; each landmark needs its own")
    if flip_pairs is None:
        index = {n: i for i, n in enumerate(names)}
        flip_pairs = sorted(
            {tuple(sorted((i, index[m]))) for i, n in enumerate(names) if (m := mirrored_name(n)) in index}
        )
    return LandmarkTemplate(tuple(names), tuple(flip_pairs))


def template_from_file(path) -> LandmarkTemplate:
    """A template from a JSON file ``{"names": [...], "flip_pairs": [[i, j], ...]}`` (the
    ``landmarks.json`` of a landmark folder)."""
    try:
        return LandmarkTemplate.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TemplateMismatchError(f"{path} is not a landmark template (JSON with 'names'): {e}") from None


def template_order(template: LandmarkTemplate, names) -> list[int]:
    """For each template landmark, its index in ``names``; refuses a list of other landmarks."""
    names = [str(n) for n in names]
    missing = [n for n in template.names if n not in names]
    extra = [n for n in names if n not in template.names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if missing or extra or repeated or len(names) != template.num_keypoints:
        problems = [f"{len(names)} points for {template.num_keypoints} landmarks"]
        problems += [f"missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"] if missing else []
        problems += [f"not in the template {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}"] if extra else []
        problems += [f"named twice {', '.join(repeated)}"] if repeated else []
        raise TemplateMismatchError(
            "the point list does not match the training set's landmarks: " + "; ".join(problems)
        )
    return [names.index(n) for n in template.names]


# ------------------------------------------------------------------ images


def pixels_sha256(pixels) -> str:
    """The identity of an image in a set: its grey pixels as the model sees them, and their shape."""
    array = np.ascontiguousarray(pixels, dtype=np.float32)
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


def list_images(folder) -> dict[str, Path]:
    """stem -> image file directly in the set (as :func:`.data.folder.list_images`)."""
    folder = Path(folder)
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and is_image_name(path.name):
            images.setdefault(file_stem(path), path)
    return images


def points_path(folder, stem: str) -> Path:
    return Path(folder) / (stem + POINTS_JSON)


def unannotated_images(folder) -> list[Path]:
    """The set's images without a point list, in name order."""
    return [path for stem, path in list_images(folder).items() if not points_path(folder, stem).is_file()]


def safe_stem(name: str) -> str:
    stem = _UNSAFE.sub("_", file_stem(Path(str(name)).name)).strip("._")
    return stem[:100] or "image"


def _free_stem(folder: Path, name: str) -> str:
    stem, taken, n = safe_stem(name), list_images(folder), 1
    candidate = stem
    while candidate in taken or points_path(folder, candidate).is_file():
        n += 1
        candidate = f"{stem}_{n}"
    return candidate


def add_image(
    folder,
    pixels,
    spacing,
    points_xy,
    names,
    states,
    name: str,
    *,
    stem: str | None = None,
    replace: bool = False,
    template: LandmarkTemplate | None = None,
) -> Path:
    """Add an annotated image; returns its point list's path.

    ``pixels`` (H, W) grey as the model sees them, ``spacing`` (sx, sy); ``points_xy`` (K, 2) in
    its pixels with their ``names`` and ``states`` (in any order; matched to the template by
    name). ``stem``: the image is the set's own ``SET/<stem>.*`` (annotated where it lies), else it
    is written as ``SET/<name>.nrrd``. A folder that is no training set yet becomes one, with
    ``template`` or the names of this first list as its template.

    Refused, with nothing written: points of other landmarks, an image already in the set
    (unless ``replace``: then its points are replaced), a set of another version.
    """
    folder = Path(folder)
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise TrainingSetError(f"expected a 2-D grey image, got shape {pixels.shape}")
    record = check_format(folder)
    existing = read_template(folder)
    set_template = existing or template or template_from_names(names)
    order = template_order(set_template, names)
    digest = pixels_sha256(pixels)
    images = (record or new_record())["images"]
    if stem is None:
        stem = next((s for s, entry in images.items() if entry.get("sha256") == digest), None)
        stem = stem if stem in list_images(folder) else None  # its file removed by hand: added anew
        is_new = stem is None
    else:
        if stem not in list_images(folder):
            raise TrainingSetError(f"{folder} has no image {stem!r} to annotate")
        is_new = False
    if not is_new and points_path(folder, stem).is_file() and not replace:
        raise AlreadyAddedError(
            f"this image is already in the training set as {stem!r} with its points: replace them, or keep them"
        )
    create_training_set(folder, set_template)  # a no-op for a set of this template
    if is_new:
        stem = _free_stem(folder, name)
        _write_image(folder / (stem + ADDED_IMAGE_SUFFIX), pixels, spacing)
    assert stem is not None
    path = _write_points(folder, stem, pixels.shape, spacing, points_xy, names, states, order, set_template)
    record = check_format(folder) or new_record()
    entry = record["images"].setdefault(stem, {})
    entry.update(sha256=digest, source=str(name), added=time.strftime("%Y-%m-%dT%H:%M:%S"))
    _write_json(folder / TRAINING_SET_JSON, record)
    return path


def _write_image(path: Path, pixels: np.ndarray, spacing) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing([float(v) for v in spacing][:2])
    tmp = path.with_name("." + path.name)  # keeps the suffix (SimpleITK picks the writer by it); hidden: no image
    sitk.WriteImage(image, str(tmp), True)
    os.replace(tmp, path)


def _write_points(folder, stem, shape, spacing, points_xy, names, states, order, template) -> Path:
    """The point list in the geometry the folder reader gives the image: its header's spacing
    and origin (an added image: its spacing, origin 0), so the labels come back to the pixel."""
    from .markups import write_markups_json

    image = list_images(folder)[stem]
    spacing, origin = _file_geometry(image) if image.suffix != ADDED_IMAGE_SUFFIX else (spacing, (0.0, 0.0))
    points = np.asarray(points_xy, dtype=np.float64)[order]
    return write_markups_json(
        points_path(folder, stem),
        points,
        template.names,
        spacing=spacing,
        origin=origin,
        states=[str(states[i]) for i in order],
        node_name=stem,
    )


def _file_geometry(path: Path):
    from .imaging import image_geometry  # the folder reader's own geometry

    _, spacing, origin, _ = image_geometry(path)
    return spacing, origin


# ------------------------------------------------------------------ models


def models_folder(folder) -> Path:
    return Path(folder) / MODELS_FOLDER


def trained_models(folder) -> list[Path]:
    """The set's model folders that hold weights, oldest first."""
    from .model_folders import is_model_folder

    root = models_folder(folder)
    return sorted(p for p in root.iterdir() if is_model_folder(p)) if root.is_dir() else []


def next_model_folder(folder) -> Path:
    """``SET/models/<set>-NN``, NN one more than any run there (finished or not)."""
    root = models_folder(folder)
    name = safe_stem(Path(folder).resolve().name)
    numbers = [
        int(m.group(1)) for p in (root.iterdir() if root.is_dir() else []) if (m := re.search(r"-(\d+)$", p.name))
    ]
    return root / f"{name}-{max(numbers, default=0) + 1:02d}"
