"""The facts every part of the project must agree on, in one place (numpy only, no torch).

* landmark templates: the AP spine (AASCE order) and the ISBI 2015 cephalogram, with the
  left/right pairs a horizontal flip swaps;
* point states (``predicted`` / ``user-fixed``) and the one palette they are drawn in;
* file names: which files are images, a file's stem, the names written next to an image;
* pixel geometry: which points lie on the image, radial error, pixels to mm, pixels to physical
  LPS positions, spacing from an image header and how the output names it.

Points are (x, y) = (column, row) in original-image pixels with pixel centres at integers,
so an (H, W) image covers [-0.5, W - 0.5] x [-0.5, H - 0.5].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------ landmark templates


@dataclass(frozen=True)
class LandmarkTemplate:
    """Landmark names in channel order and the index pairs a horizontal mirror swaps.

    ``flip_allowed``: whether a mirrored image is still a plausible radiograph (AP spine
    yes; a lateral cephalogram would face the other way). Left unset, it is True exactly
    when there are left/right pairs.
    """

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    flip_allowed: bool | None = None

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        if not names or len(set(names)) != len(names):
            raise ValueError("a landmark template needs a non-empty list of distinct names")
        pairs = tuple((int(a), int(b)) for a, b in self.flip_pairs)
        outside = [p for p in pairs if not all(0 <= i < len(names) for i in p)]
        if outside:
            raise ValueError(f"flip pair(s) {outside} outside landmark indices 0..{len(names) - 1}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "flip_pairs", pairs)
        object.__setattr__(self, "flip_allowed", bool(pairs) if self.flip_allowed is None else bool(self.flip_allowed))

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def to_json(self) -> dict:
        """The ``landmarks.json`` of a landmark folder (see :mod:`.data.folder`)."""
        return {
            "names": list(self.names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "flip_allowed": self.flip_allowed,
        }

    @classmethod
    def from_json(cls, d: dict) -> LandmarkTemplate:
        return cls(tuple(d["names"]), tuple(d.get("flip_pairs", ())), d.get("flip_allowed"))


SPINE_VERTEBRAE = tuple(f"T{i}" for i in range(1, 13)) + tuple(f"L{i}" for i in range(1, 6))
SPINE_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def spine_template(vertebrae=SPINE_VERTEBRAE) -> LandmarkTemplate:
    """The 4 corners of each vertebra, top to bottom, as ``<vertebra>-<corner>``; a flip
    turns each vertebra's left corners into right ones (left = smaller x in the image)."""
    names = tuple(f"{v}-{c}" for v in vertebrae for c in SPINE_CORNERS)
    pairs = tuple(p for v in range(len(vertebrae)) for p in ((4 * v, 4 * v + 1), (4 * v + 2, 4 * v + 3)))
    return LandmarkTemplate(names, pairs)


# AASCE 2019 / BoostNet: 68 corners of T1..L5 (the phantoms use the same order)
SPINE = spine_template()
# ISBI 2015 cephalometric landmarks, in the order of the official annotation files
CEPH = LandmarkTemplate(
    (
        "sella",
        "nasion",
        "orbitale",
        "porion",
        "subspinale",
        "supramentale",
        "pogonion",
        "menton",
        "gnathion",
        "gonion",
        "lower incisal incision",
        "upper incisal incision",
        "upper lip",
        "lower lip",
        "subnasale",
        "soft-tissue pogonion",
        "posterior nasal spine",
        "anterior nasal spine",
        "articulare",
    ),  # fmt: skip
    flip_allowed=False,  # a flipped lateral cephalogram faces the other way: not a real image
)

# --------------------------------------------------------------- point states, colours

PREDICTED = "predicted"  # placed by the model; moves when the model re-runs
USER_FIXED = "user-fixed"  # placed by the user; the model never moves it

# One palette for Slicer, the browser, written .mrk.json files and overlay PNGs: the one a
# Slicer user sees. Predicted points are the markups' unselected colour, user-fixed points
# the selected colour (the selected flag marks them), the active colour is the point under
# the mouse. Amber and green stay apart from the cyan of ground truth in overlays.
PREDICTED_COLOR = (1.0, 0.75, 0.2)  # amber
FIXED_COLOR = (0.3, 1.0, 0.4)  # green
ACTIVE_COLOR = (0.4, 1.0, 1.0)
MEASUREMENT_COLOR = (1.0, 0.25, 0.85)  # magenta: a measurement's lines, apart from both point colours


def is_label(state: str) -> bool:
    """Whether a point with this state is a training label: every point the user placed by hand
    (no state: a plain Slicer point list), moved or confirmed (``user-fixed``); never one the
    model placed and nobody reviewed (``predicted``), which would teach the model its own error."""
    return state != PREDICTED


def state_names(fixed) -> list[str]:
    """The state of every point from its (K,) user-fixed flags."""
    return [USER_FIXED if f else PREDICTED for f in np.asarray(fixed, dtype=bool).reshape(-1)]


def hex_color(rgb) -> str:
    """(r, g, b) in 0..1 -> ``"#rrggbb"`` (CSS, matplotlib)."""
    return "#" + "".join(f"{int(255 * float(c) + 0.5):02x}" for c in rgb)  # half up, not to even


# ------------------------------------------------------------------------- file names

# what the folder commands (Slicer's Process folder, the generic landmark folder) take as
# images; chosen by name, so an unreadable image is reported rather than skipped
IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom",
    ".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd",
)  # fmt: skip
# what is written next to an image's stem
POINTS_JSON = ".mrk.json"  # Slicer markups point list, LPS
POINTS_CSV = ".csv"
MEASUREMENTS_JSON = ".measurements.json"
MEASUREMENTS_CSV = ".measurements.csv"
OVERLAY_PNG = ".png"
# a landmark folder (data/folder.py) names its landmarks here; a training set made by the
# module, the browser or the command line (training_set.py) also has its record
LANDMARKS_JSON = "landmarks.json"
TRAINING_SET_JSON = "training_set.json"
TRAINING_SET_FORMAT = "interactive-keypoints-training-set"
TRAINING_SET_FORMAT_VERSION = 1
# suffixes of two parts that Path.stem would cut in the middle
_DOUBLE_SUFFIXES = (".nii.gz", POINTS_JSON, MEASUREMENTS_JSON, MEASUREMENTS_CSV)


def is_image_name(name: str) -> bool:
    """An image file name by its suffix; hidden files (``._scan.png``) are not images."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def file_stem(path) -> str:
    """``scan.nii.gz`` -> ``scan``, ``scan.mrk.json`` -> ``scan``, ``scan.v2.png`` -> ``scan.v2``."""
    name = Path(path).name
    for suffix in _DOUBLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def output_stem(image_path, out_dir=None) -> Path:
    """Where the results for an image go, without suffix: ``<out_dir or image folder>/<stem>``."""
    image_path = Path(image_path)
    return Path(out_dir or image_path.parent) / file_stem(image_path)


def output_path(stem, suffix: str) -> Path:
    """``stem`` + ``suffix`` (``POINTS_JSON``, ``MEASUREMENTS_CSV``, ...), even when the stem has dots."""
    stem = Path(stem)
    return stem.with_name(stem.name + suffix)


# --------------------------------------------------------------------- pixel geometry


def inside_image(points, size):
    """Whether (..., 2) points (x, y) lie on an (H, W) image: (...,) bool, or one bool for
    one point. Edges count as inside; NaN is outside."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape[-1:] != (2,):
        raise ValueError(f"expected (..., 2) points, got shape {points.shape}")
    h, w = size
    x, y = points[..., 0], points[..., 1]
    inside = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    return bool(inside) if inside.ndim == 0 else inside


def pixels_to_mm(vectors, spacing) -> np.ndarray:
    """(..., 2) pixel points or displacements -> mm: per axis times the spacing (sx, sy).

    Positions are relative to pixel (0, 0); add the image origin for physical positions.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.shape[-1:] != (2,):
        raise ValueError(f"expected (..., 2) pixel vectors, got shape {vectors.shape}")
    return vectors * np.asarray(spacing, dtype=np.float64).reshape(2)


def ijk_to_lps(spacing, origin=(0.0, 0.0, 0.0), direction=None) -> np.ndarray:
    """(4, 4) matrix from pixel (x, y, slice, 1) to physical LPS mm, as ITK and DICOM define an
    image's geometry: LPS = origin + direction @ (spacing * index). ``origin`` is the position of
    pixel (0, 0) (2 or 3 values); ``direction`` (3, 3) has the LPS directions of the columns, the
    rows and the normal as its columns (None: identity, the geometry of a PNG)."""
    origin = np.asarray(origin, dtype=np.float64).reshape(-1)
    origin = np.append(origin, np.zeros(3 - origin.size)) if origin.size < 3 else origin[:3]
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    sx, sy = (float(v) for v in np.asarray(spacing, dtype=np.float64).reshape(2))
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag([sx, sy, 1.0])
    matrix[:3, 3] = origin
    return matrix


def pixels_to_lps(points_xy, matrix: np.ndarray) -> np.ndarray:
    """(K, 2) pixel (x, y) -> (K, 3) LPS mm through an :func:`ijk_to_lps` matrix."""
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    ijk = np.column_stack([points_xy, np.zeros(len(points_xy)), np.ones(len(points_xy))])
    return (ijk @ np.asarray(matrix, dtype=np.float64).T)[:, :3]


def lps_to_pixels(points_lps, matrix: np.ndarray) -> np.ndarray:
    """(K, 3) LPS mm -> (K, 2) pixel (x, y), projected on the image plane."""
    points_lps = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    homogeneous = np.column_stack([points_lps, np.ones(len(points_lps))])
    return (homogeneous @ np.linalg.inv(np.asarray(matrix, dtype=np.float64)).T)[:, :2]


def radial_errors(pred, truth, spacing=None) -> np.ndarray:
    """Euclidean distance per point, (..., K); in mm when ``spacing`` (sx, sy) is given."""
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    if diff.shape[-1:] != (2,):
        raise ValueError(f"expected (..., K, 2) points, got shape {diff.shape}")
    return np.linalg.norm(diff if spacing is None else pixels_to_mm(diff, spacing), axis=-1)


# Readers of these formats turn the file's print resolution (DPI) into a spacing; that says
# nothing about the detector, so their spacing is treated as unknown.
PRINT_RESOLUTION_IOS = frozenset({"PNGImageIO", "JPEGImageIO", "BMPImageIO", "TIFFImageIO"})


def header_spacing(io_name: str, spacing) -> tuple[tuple[float, float], bool]:
    """(spacing (sx, sy), known) from what an ITK reader reports: a format that stores only
    a print resolution, or the (1, 1) every reader defaults to, means unknown, (1.0, 1.0)."""
    spacing = (float(spacing[0]), float(spacing[1]))
    known = io_name not in PRINT_RESOLUTION_IOS and spacing != (1.0, 1.0)
    return (spacing if known else (1.0, 1.0)), known


def describe_spacing(spacing, known: bool, source: str = "") -> str:
    """What the output says about the spacing its millimetres come from."""
    if not known:
        return "unknown (the file stores none): positions in pixels only"
    sx, sy = (float(v) for v in spacing)
    return f"{sx:g} x {sy:g} mm per pixel" + (f" from {source}" if source else "")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write beside, then rename: a reader (another process, a crash, a cancelled run) sees the
    old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
