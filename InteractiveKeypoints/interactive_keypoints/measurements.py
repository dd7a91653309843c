"""Clinical measurements from landmark positions: Cobb angles (spine) and the ISBI 2015
cephalometric analysis. Plain numpy, no torch: recomputed after every drag.

>>> records = measure(points, "aasce-cobb", image_height=2000)
>>> [(m.name, round(m.value, 1)) for m in records]
[('Cobb MT', 41.1), ('Cobb PT', 14.6), ('Cobb TL', 40.1)]

Points are (x, y) original-image pixels (x right, y down). Angles are measured on the
physical plane, i.e. after scaling by the pixel spacing (sx, sy), so that non-square
pixels do not bend them. Every record names the landmarks it uses and the line segments
(in pixels, like the points) that define it, for drawing.

Sources:

* Cobb angles: the reference computation of the AASCE 2019 challenge (Wang et al.,
  "Evaluation and comparison of accurate automated spinal curvature estimation
  algorithms with spinal anterior-posterior X-Ray images: The AASCE2019 challenge",
  Medical Image Analysis 72, 2021) on the BoostNet landmarks (Wu et al., "Automatic
  landmark estimation for adolescent idiopathic scoliosis assessment using BoostNet",
  MICCAI 2017).
* Ceph analysis: the eight measurements and class thresholds of the ISBI 2015 challenge
  (Wang et al., "A benchmark for comparison of dental radiography analysis algorithms",
  Medical Image Analysis 31, 2016, https://doi.org/10.1016/j.media.2016.02.004, its table
  of measurement definitions), checked against the challenge's own evaluation code
  (``angle.py`` of the ISBI 2015 evaluation software, as ported to Python in
  https://github.com/hjkwonispl/mpa, ``src/evaluation.py``, class ``FacialTypeMeasurement``).
  Where a textbook reading differs, the evaluation code decides, because it made the
  challenge's class labels: its FMA is the angle between S-N and Go-Gn (not Frankfort to
  the mandibular plane); the palatal-plane term of APDI has the same sign as in ODI
  (positive when the palatal plane tips down anteriorly against FH; also the sign rule
  of Kim's APDI and ODI as restated in Progress in Orthodontics,
  https://doi.org/10.1186/s40510-016-0147-8, table 2); and every
  MW below 2 mm other than exactly 0 is class 3 (anterior crossbite). On the ground-truth
  landmarks of the 300 public images (training + test 1) these definitions give the
  evaluation code's value and class for all 8 measurements on every image
  (Testing/test_measurements.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .conventions import CEPH, MEASUREMENTS_CSV, MEASUREMENTS_JSON, SPINE, SPINE_VERTEBRAE, output_path

# measurement set -> the landmark template its points follow
MEASUREMENT_TEMPLATES = {"aasce-cobb": SPINE, "isbi-ceph": CEPH}
MEASUREMENT_SETS = tuple(MEASUREMENT_TEMPLATES)

Segment = tuple[tuple[float, float], tuple[float, float]]  # ((x0, y0), (x1, y1)) pixels


@dataclass(frozen=True)
class Measurement:
    name: str
    value: float
    unit: str  # "deg", "mm", "px" or "ratio"
    landmarks: tuple[int, ...]  # 0-based indices of the landmarks it is computed from
    lines: tuple[Segment, ...] = ()  # segments that define it (an angle: its two lines)
    category: str = ""  # clinical class, "" where the measurement has none
    description: str = ""
    extra: dict = field(default_factory=dict)  # e.g. a Cobb angle's end vertebrae

    def to_dict(self) -> dict:
        d = asdict(self)
        d["landmarks"] = list(self.landmarks)
        d["lines"] = [[list(a), list(b)] for a, b in self.lines]
        return d


def measure(points, measurement_set: str, spacing=None, image_height: float | None = None) -> list[Measurement]:
    """The measurements of ``measurement_set`` ("aasce-cobb" or "isbi-ceph"; "" gives none).

    ``spacing`` (sx, sy) mm per pixel, or None when unknown (lengths then stay in px and
    the ceph MW, defined in mm, gets no class). ``image_height`` in pixels is used by the
    Cobb computation to tell an upper from a lower major curve (see :func:`cobb_angles`).
    """
    if not measurement_set:
        return []
    if measurement_set not in MEASUREMENT_SETS:
        raise ValueError(f"unknown measurement set {measurement_set!r}; expected one of {MEASUREMENT_SETS} or ''")
    points = _check_points(points, MEASUREMENT_TEMPLATES[measurement_set].num_keypoints, measurement_set)
    if measurement_set == "aasce-cobb":
        return cobb_angles(points, spacing, image_height)
    return ceph_analysis(points, spacing)


def _check_points(points, count: int, what: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (count, 2):
        raise ValueError(f"{what} needs ({count}, 2) points (x, y), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{what}: the points contain NaN or infinity")
    return points


def _scale(spacing) -> np.ndarray:
    scale = np.ones(2) if spacing is None else np.asarray(spacing, dtype=np.float64).reshape(2)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"spacing must be two positive numbers, got {spacing!r}")
    return scale


def _segment(a, b) -> Segment:
    return ((float(a[0]), float(a[1])), (float(b[0]), float(b[1])))


# --------------------------------------------------------------------------- spine


def _angle_between(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unsigned angle in degrees between direction vectors (broadcasting over leading axes)."""
    cos = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def has_s_shape(endplate_midpoints: np.ndarray) -> bool:
    """The AASCE S-curve test: do the endplate midpoints lie on both sides of the line
    joining the first and the last one? (The reference compares the signs of each
    point's offset from that line; like it, the second-to-last midpoint is left out.)"""
    first, last = endplate_midpoints[0], endplate_midpoints[-1]
    d = first - last
    rel = endplate_midpoints[1:-2] - last
    offsets = rel[:, 1] * d[0] - rel[:, 0] * d[1]  # cross product: the side of the line
    return bool((offsets > 0).any() and (offsets < 0).any())


def cobb_angles(points, spacing=None, image_height: float | None = None) -> list[Measurement]:
    """The three Cobb angles the AASCE 2019 challenge scores, in its order (the order of
    the dataset's ``angles.csv``): the major curve first, then the two chosen around it.

    68 corners = 17 vertebrae T1..L5 x (top-left, top-right, bottom-left, bottom-right).
    A vertebra's tilt is the line from the midpoint of its left edge (TL-BL) to the
    midpoint of its right edge (TR-BR). Between every pair of tilts there is an angle;
    the largest pair is the major curve, its upper and lower end vertebrae U and L.

    * No S shape (:func:`has_s_shape` on the 34 endplate midpoints): the second angle is
      between T1 and U, the third between L and L5.
    * S shape, major curve in the upper half of the image (mean height of the lower
      endplate midpoints of U and L above ``image_height / 2``): the second is the largest
      angle between U and any vertebra above it, the third the largest between L and any
      vertebra below it.
    * S shape, major curve in the lower half: the second is the largest angle between U
      and a vertebra above it (upper end U2), the third the largest between U2 and a
      vertebra above U2 - two curves above a lumbar major curve.

    Names follow the challenge's thoracic reading: "Cobb MT" (major), "Cobb PT" (above
    it), "Cobb TL" (below it); in the last case the third curve lies above the second,
    which the record's ``extra["curve"]`` says. Without ``image_height`` the middle of
    the image is taken to be the middle of the spine (T1 top to L5 bottom).
    """
    points = _check_points(points, SPINE.num_keypoints, "Cobb angles")
    corners = points.reshape(17, 4, 2)
    scale = _scale(spacing)
    left_mid = (corners[:, 0] + corners[:, 2]) / 2  # (17, 2) pixels
    right_mid = (corners[:, 1] + corners[:, 3]) / 2
    tilts = (right_mid - left_mid) * scale
    if (np.linalg.norm(tilts, axis=1) == 0).any():
        raise ValueError("Cobb angles: a vertebra has its left and right edge midpoints at the same place")
    angles = _angle_between(tilts[:, None, :], tilts[None, :, :])  # (17, 17)
    endplate_mid = (points[0::2] + points[1::2]) / 2  # (34, 2): top, bottom of each vertebra

    upper, lower = np.unravel_index(np.argmax(angles), angles.shape)  # first maximum
    upper, lower = int(min(upper, lower)), int(max(upper, lower))
    curves = [("major", upper, lower)]
    last = 16
    if not has_s_shape(endplate_mid * scale):
        curves += [("above major", 0, upper), ("below major", lower, last)]
    else:
        middle = image_height / 2 if image_height is not None else (points[0:2, 1].mean() + points[66:68, 1].mean()) / 2
        above = int(np.argmax(angles[upper, : upper + 1]))
        curves.append(("above major", above, upper))
        if (endplate_mid[2 * upper + 1, 1] + endplate_mid[2 * lower + 1, 1]) / 2 < middle:
            below = lower + int(np.argmax(angles[lower, lower:]))
            curves.append(("below major", lower, below))
        else:
            higher = int(np.argmax(angles[above, : above + 1]))
            curves.append(("above the curve above major", higher, above))

    records = []
    for name, (curve, top, bottom) in zip(("Cobb MT", "Cobb PT", "Cobb TL"), curves):
        records.append(Measurement(
            name=name,
            value=float(angles[top, bottom]),
            unit="deg",
            landmarks=tuple(range(4 * top, 4 * top + 4)) + tuple(range(4 * bottom, 4 * bottom + 4)),
            lines=(_segment(left_mid[top], right_mid[top]), _segment(left_mid[bottom], right_mid[bottom])),
            description=f"Cobb angle {SPINE_VERTEBRAE[top]}-{SPINE_VERTEBRAE[bottom]} ({curve} curve)",
            extra={"curve": curve, "end_vertebrae": [SPINE_VERTEBRAE[top], SPINE_VERTEBRAE[bottom]]},
        ))  # fmt: skip
    return records


# --------------------------------------------------------------------------- cephalometry

# ISBI 2015 landmark indices (0-based; the paper numbers them L1..L19)
S, N, OR, PO, A, B, POG, ME, GN, GO, LIT, UIT, UL, LL, SN, SPOG, PNS, ANS, AR = range(19)

# name -> (normal range (low, high), class below low, class within, class above high);
# a value on a bound is within, as in the challenge's evaluation code
CEPH_CLASSES = {
    "ANB": ((3.2, 5.7), "class III", "class I (normal)", "class II"),
    "SNB": ((74.6, 78.7), "retrognathic mandible", "normal mandible", "prognathic mandible"),
    "SNA": ((79.4, 83.2), "retrognathic maxilla", "normal maxilla", "prognathic maxilla"),
    "ODI": ((68.4, 80.5), "open bite tendency", "normal", "deep bite tendency"),
    "APDI": ((77.6, 85.2), "class II tendency", "normal", "class III tendency"),
    "FHI": ((0.65, 0.75), "long face tendency", "normal", "short face tendency"),
    "FMA": ((26.8, 31.4), "low angle tendency", "normal", "high angle tendency"),
    "MW": ((2.0, 4.5), "edge to edge", "normal occlusion", "large overjet"),
}
MW_CROSSBITE = "anterior crossbite"  # the fourth MW class: MW < 2 mm and not 0 (see ceph_class)
# the challenge's type numbers (1 = normal) of the class below and above the normal range
ISBI_TYPES = {"ANB": (3, 2), "SNB": (2, 3), "SNA": (3, 2), "ODI": (3, 2), "APDI": (2, 3), "FHI": (3, 2), "FMA": (3, 2)}
MW_TYPES = {"normal occlusion": 1, "edge to edge": 2, MW_CROSSBITE: 3, "large overjet": 4}


def ceph_class(name: str, value: float) -> str:
    """The ISBI 2015 class of one measurement value (MW in mm).

    MW: the table names MW = 0 edge to edge and MW < 0 anterior crossbite and leaves
    0 < MW < 2 open; the challenge's evaluation code, which made its labels, puts every
    MW below 2 other than exactly 0 into anterior crossbite, and so do we."""
    (low, high), below, within, above = CEPH_CLASSES[name]
    if name == "MW" and value < low:
        return below if value == 0 else MW_CROSSBITE
    if value < low:
        return below
    return above if value > high else within


def isbi_type(name: str, category: str) -> int:
    """The challenge's type number of a class: 1 normal, then 2, 3 (and 4 for MW) as in
    its table and evaluation code."""
    if name == "MW":
        return MW_TYPES[category]
    (_, _), below, within, above = CEPH_CLASSES[name]
    return {within: 1, below: ISBI_TYPES[name][0], above: ISBI_TYPES[name][1]}[category]


def ceph_analysis(points, spacing=None) -> list[Measurement]:
    """The eight ISBI 2015 measurements with their classes.

    Lines are directed posterior -> anterior or top -> bottom and their inclinations are
    measured in an anatomical frame (x towards the face, y up), so the signed terms of
    ODI and APDI do not depend on which way the face looks in the image (taken from
    sella -> nasion).

    * SNA, SNB: angle S-N-A, S-N-B at nasion. ANB = SNA - SNB (negative when B is ahead).
    * ODI (overbite depth indicator): angle of the A-B line to the mandibular plane
      (gonion-menton) plus the palatal-plane angle: the angle between Frankfort horizontal
      (porion-orbitale) and the palatal plane (PNS-ANS), negative when the palatal plane
      tips up anteriorly.
    * APDI (anteroposterior dysplasia indicator): facial angle (FH to nasion-pogonion)
      plus the AB-plane angle (N-Pog to A-B, negative when the A-B line runs down and back
      more steeply than N-Pog, i.e. B behind A) plus the palatal-plane angle of ODI.
    * FHI: posterior / anterior face height, |S-Go| / |N-Me|.
    * FMA as the challenge measures it: the angle between S-N and gonion-gnathion (the
      clinical FMA uses FH and Go-Me; the challenge's thresholds are for this one).
    * MW (modified Wits): distance between the upper and the lower incisal tips, negative
      when the lower incisor is ahead of the upper; classed only in mm (known spacing).

    Each classed record's ``extra["isbi_type"]`` is the challenge's type number (1 normal).
    """
    pixels = _check_points(points, CEPH.num_keypoints, "ISBI ceph analysis")
    scale = _scale(spacing)
    p = pixels * scale
    facing = 1.0 if p[N, 0] >= p[S, 0] else -1.0
    anat = np.stack([facing * p[:, 0], -p[:, 1]], axis=1)  # x anterior, y up

    def inclination(i, j):  # direction of the line i -> j, degrees
        d = anat[j] - anat[i]
        return float(np.degrees(np.arctan2(d[1], d[0])))

    def wrap(angle):  # to (-180, 180]
        return float(-((-angle + 180.0) % 360.0 - 180.0))

    def at_nasion(i):
        return float(_angle_between(anat[S] - anat[N], anat[i] - anat[N]))

    sna, snb = at_nasion(A), at_nasion(B)
    fh, mandibular, palatal = inclination(PO, OR), inclination(GO, ME), inclination(PNS, ANS)
    ab, facial = inclination(A, B), inclination(N, POG)
    palatal_to_fh = wrap(fh - palatal)  # > 0: palatal plane tips down anteriorly
    odi = wrap(mandibular - ab) + palatal_to_fh
    apdi = wrap(180.0 + facial - fh) + wrap(ab - facial) + palatal_to_fh
    fhi = float(np.linalg.norm(p[S] - p[GO]) / np.linalg.norm(p[N] - p[ME]))
    fma = float(_angle_between(anat[N] - anat[S], anat[GN] - anat[GO]))
    mw = float(np.linalg.norm(p[UIT] - p[LIT])) * (1.0 if anat[UIT, 0] >= anat[LIT, 0] else -1.0)

    seg = lambda i, j: _segment(pixels[i], pixels[j])  # noqa: E731
    length_unit = "px" if spacing is None else "mm"
    rows = [
        ("SNA", sna, "deg", (S, N, A), (seg(N, S), seg(N, A)), "angle sella-nasion-subspinale"),
        ("SNB", snb, "deg", (S, N, B), (seg(N, S), seg(N, B)), "angle sella-nasion-supramentale"),
        ("ANB", sna - snb, "deg", (S, N, A, B), (seg(N, A), seg(N, B)), "SNA - SNB"),
        ("ODI", odi, "deg", (A, B, GO, ME, PNS, ANS, PO, OR),
         (seg(A, B), seg(GO, ME), seg(PNS, ANS), seg(PO, OR)), "overbite depth indicator: AB to MP + PP to FH"),
        ("APDI", apdi, "deg", (PO, OR, N, POG, A, B, PNS, ANS),
         (seg(PO, OR), seg(N, POG), seg(A, B), seg(PNS, ANS)),
         "anteroposterior dysplasia indicator: FH to N-Pog + N-Pog to AB + FH to PP"),
        ("FHI", fhi, "ratio", (S, GO, N, ME), (seg(S, GO), seg(N, ME)), "facial height index |S-Go| / |N-Me|"),
        ("FMA", fma, "deg", (S, N, GO, GN), (seg(S, N), seg(GO, GN)), "the challenge's FMA: S-N to gonion-gnathion"),
        ("MW", mw, length_unit, (UIT, LIT), (seg(LIT, UIT),), "modified Wits: upper to lower incisal tip"),
    ]  # fmt: skip
    records = []
    for name, value, unit, landmarks, lines, description in rows:
        category = "" if unit == "px" else ceph_class(name, value)
        extra = {"isbi_type": isbi_type(name, category)} if category else {}
        records.append(Measurement(name, float(value), unit, tuple(landmarks), lines, category, description, extra))
    return records


# --------------------------------------------------------------------------- output


def measurement_table(records) -> list[dict]:
    """Flat rows (name, value, unit, class, landmarks, description) for CSV and tables."""
    return [
        {
            "name": m.name,
            "value": f"{m.value:.4f}",
            "unit": m.unit,
            "class": m.category,
            "landmarks": " ".join(str(i) for i in m.landmarks),
            "description": m.description,
        }
        for m in records
    ]


def write_measurements(stem, records, measurement_set: str) -> list:
    """``stem.measurements.json`` (full records, lines included) and ``stem.measurements.csv``."""
    import csv
    import json

    json_path, csv_path = output_path(stem, MEASUREMENTS_JSON), output_path(stem, MEASUREMENTS_CSV)
    json_path.write_text(
        json.dumps({"measurement_set": measurement_set, "measurements": [m.to_dict() for m in records]}, indent=1)
    )
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "value", "unit", "class", "landmarks", "description"])
        writer.writeheader()
        writer.writerows(measurement_table(records))
    return [json_path, csv_path]
