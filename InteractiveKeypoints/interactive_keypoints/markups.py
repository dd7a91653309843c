"""Slicer markups point-list files (``.mrk.json``) and CSV, written and read without Slicer.

Positions in the file are physical LPS millimetres: pixel (x, y) is at
``origin + direction @ (x * sx, y * sy, 0)`` - the same place Slicer shows that pixel. For a PNG
(identity direction) that is LPS (ox + x * sx, oy + y * sy, oz); a DICOM brings its Image
Position and Orientation (Patient).

Each control point's ``description`` holds its state and, when known, the model's
confidence: ``"predicted; confidence=0.930"`` or ``"user-fixed"``. The ``selected`` flag
is True for user-fixed points so that Slicer draws them in the second (selected) colour.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import conventions
from .conventions import ACTIVE_COLOR, FIXED_COLOR, PREDICTED, PREDICTED_COLOR, USER_FIXED, pixels_to_mm
from .errors import KeypointsError

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
# identity orientation, as Slicer writes it in LPS
_LPS_IDENTITY = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
# unselected = predicted, selected = user-fixed (the project's one palette)
_DISPLAY = {
    "visibility": True,
    "opacity": 1.0,
    "color": list(PREDICTED_COLOR),
    "selectedColor": list(FIXED_COLOR),
    "activeColor": list(ACTIVE_COLOR),
    "propertiesLabelVisibility": False,
    "pointLabelsVisibility": True,
    "textScale": 2.0,
    "glyphType": "Sphere3D",
    "glyphScale": 1.5,
    "glyphSize": 5.0,
    "useGlyphScale": True,
}


class MarkupsError(KeypointsError, ValueError):
    """A markups file that cannot be read as a point list."""


@dataclass
class MarkupsPoints:
    points: np.ndarray  # (K, 2) original pixels (x, y); NaN for undefined points
    names: list[str]
    states: list[str]  # "predicted", "user-fixed", ... or "" when the file says nothing
    confidence: np.ndarray  # (K,) float, NaN when not recorded
    node_name: str = ""


# ----------------------------------------------------------------------------- geometry


def pixels_to_lps(points_xy, spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=None) -> np.ndarray:
    """(K, 2) pixel (x, y) -> (K, 3) physical LPS mm of an image with this geometry (origin:
    2 or 3 values; direction: (3, 3), None for identity, see :func:`conventions.ijk_to_lps`)."""
    return conventions.pixels_to_lps(points_xy, conventions.ijk_to_lps(spacing, origin, direction))


def lps_to_pixels(lps, spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=None) -> np.ndarray:
    """(K, 3) physical LPS mm -> (K, 2) pixel (x, y); the inverse of :func:`pixels_to_lps`."""
    return conventions.lps_to_pixels(lps, conventions.ijk_to_lps(spacing, origin, direction))


# -------------------------------------------------------------------------- description


def format_description(state: str, confidence: float | None = None) -> str:
    if confidence is None or not np.isfinite(confidence):
        return state
    return f"{state}; confidence={confidence:.3f}"


def parse_description(text: str) -> tuple[str, float]:
    """``"predicted; confidence=0.93"`` -> ("predicted", 0.93); free text -> (text, NaN)."""
    parts = [p.strip() for p in (text or "").split(";")]
    state, confidence = parts[0], float("nan")
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key.strip() == "confidence":
            try:
                confidence = float(value)
            except ValueError:
                pass
    return state, confidence


# ------------------------------------------------------------------------------ writing


def _checked(points_xy, names, states, confidence):
    points_xy = np.asarray(points_xy, dtype=float)
    if points_xy.ndim != 2 or points_xy.shape[1] != 2:
        raise ValueError(f"points must be (K, 2), got shape {points_xy.shape}")
    k = len(points_xy)
    names = [str(n) for n in names]
    states = [PREDICTED] * k if states is None else [str(s) for s in states]
    confidence = np.full(k, np.nan) if confidence is None else np.asarray(confidence, dtype=float).reshape(-1)
    for what, n in (("names", len(names)), ("states", len(states)), ("confidence values", len(confidence))):
        if n != k:
            raise ValueError(f"{n} {what} for {k} points")
    return points_xy, names, states, confidence


def write_markups_json(
    path,
    points_xy,
    names,
    *,
    spacing=(1.0, 1.0),
    origin=(0.0, 0.0),
    direction=None,
    states=None,
    confidence=None,
    node_name: str = "Landmarks",
) -> Path:
    """Write a Slicer point list (``.mrk.json``) for landmarks in original-image pixels, placed
    in the image's geometry (spacing, origin, direction) so that it overlays the image in Slicer."""
    points_xy, names, states, confidence = _checked(points_xy, names, states, confidence)
    lps = pixels_to_lps(points_xy, spacing, origin, direction)
    control_points = []
    for i, (name, state, conf, pos) in enumerate(zip(names, states, confidence, lps)):
        defined = bool(np.isfinite(pos).all())
        point = {
            "id": str(i + 1),
            "label": name,
            "description": format_description(state, conf),
            "associatedNodeID": "",
            "position": [float(v) for v in pos] if defined else [0.0, 0.0, 0.0],
            "orientation": list(_LPS_IDENTITY),
            "selected": state == USER_FIXED,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined" if defined else "missing",
        }
        control_points.append(point)
    document = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "name": node_name,
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": len(control_points),
                "controlPoints": control_points,
                "measurements": [],
                "display": dict(_DISPLAY),
            }
        ],
    }
    path = Path(path)
    # write next to the target, then replace: a crash never leaves half a file over user work
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=4) + "\n")
    tmp.replace(path)
    return path


CSV_COLUMNS = ("name", "x_px", "y_px", "x_mm", "y_mm", "state", "confidence", "spacing")


def write_csv(path, names, points_xy, spacing=None, states=None, confidence=None, spacing_source: str = "") -> Path:
    """CSV ``name,x_px,y_px,x_mm,y_mm,state,confidence,spacing``; mm columns empty when spacing
    is None. The ``spacing`` column says which spacing the mm values use and where it came from.

    mm values are ``pixel * spacing`` (in the image plane, relative to pixel (0, 0)).
    """
    points_xy, names, states, confidence = _checked(points_xy, names, states, confidence)
    mm = pixels_to_mm(points_xy, spacing) if spacing is not None else None
    spacing_text = conventions.describe_spacing(
        spacing if spacing is not None else (1.0, 1.0), spacing is not None, spacing_source
    )
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for i, name in enumerate(names):
            row = [name, f"{points_xy[i, 0]:.3f}", f"{points_xy[i, 1]:.3f}"]
            row += [f"{mm[i, 0]:.3f}", f"{mm[i, 1]:.3f}"] if mm is not None else ["", ""]
            row += [states[i], f"{confidence[i]:.4f}" if np.isfinite(confidence[i]) else "", spacing_text]
            writer.writerow(row)
    return path


# ------------------------------------------------------------------------------ reading


def read_markups_points(path, spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=None) -> MarkupsPoints:
    """Read the first point list of a ``.mrk.json`` (ours or Slicer's, LPS or RAS)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise MarkupsError(f"markups file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MarkupsError(f"{path} is not a JSON markups file: {e}") from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list) or not markups:
        raise MarkupsError(f"{path} has no 'markups' list; is it a Slicer .mrk.json file?")
    fiducials = [m for m in markups if isinstance(m, dict) and m.get("type", "Fiducial") == "Fiducial"]
    if not fiducials:
        types = sorted({str(m.get("type")) for m in markups if isinstance(m, dict)})
        raise MarkupsError(f"{path} holds no point list (Fiducial) markup, only {types}")
    markup = fiducials[0]

    system = markup.get("coordinateSystem", "LPS")
    if system not in ("LPS", "RAS"):
        raise MarkupsError(f"{path}: unknown coordinateSystem {system!r} (expected LPS or RAS)")
    units = markup.get("coordinateUnits", "mm")
    if units != "mm":
        raise MarkupsError(f"{path}: coordinateUnits {units!r} are not supported (expected mm)")

    control_points = markup.get("controlPoints") or []
    positions, names, states, confidence = [], [], [], []
    for i, cp in enumerate(control_points):
        defined = cp.get("positionStatus", "defined") == "defined" and "position" in cp
        pos = np.asarray(cp["position"], dtype=float) if defined else np.full(3, np.nan)
        if pos.shape != (3,):
            raise MarkupsError(f"{path}: control point {i + 1} has position {cp.get('position')!r}")
        if system == "RAS":
            pos = pos * np.array([-1.0, -1.0, 1.0])  # RAS -> LPS
        state, conf = parse_description(cp.get("description", ""))
        positions.append(pos)
        names.append(str(cp.get("label", f"L{i + 1}")))
        states.append(state)
        confidence.append(conf)
    points = lps_to_pixels(np.array(positions).reshape(-1, 3), spacing, origin, direction)
    return MarkupsPoints(
        points=points,
        names=names,
        states=states,
        confidence=np.array(confidence, dtype=float),
        node_name=str(markup.get("name", "")),
    )
