"""A procedurally generated AP spine radiograph with 68 exactly known landmarks.

The project's own data: tests, demos and smoke training run on it without any external
dataset. Geometry first (17 vertebrae T1..L5 along a random scoliotic curve), then the
image is drawn from the very same corner polygons, so the landmarks are the drawn corners.
Landmark order follows AASCE: per vertebra top to bottom, top-left, top-right,
bottom-left, bottom-right (left = smaller x in the image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .conventions import POINTS_JSON, SPINE, SPINE_VERTEBRAE, USER_FIXED, spine_template

# Physical height of the phantom film; pixels are square.
FIELD_OF_VIEW_MM = 420.0


@dataclass
class PhantomSample:
    image: np.ndarray  # (H, W) float32 in [0, 1], bright = dense
    points: np.ndarray  # (68, 2) float (x, y) pixels, AASCE order
    spacing: tuple[float, float]  # (sx, sy) mm per pixel
    names: list[str]


def make_spine_phantom(seed: int, height: int = 1024, width: int = 512, clean: bool = False) -> PhantomSample:
    """One phantom radiograph, deterministic per ``seed``.

    ``clean=True`` skips blur and noise (the exact drawing, for checking geometry).
    """
    rng = np.random.default_rng(seed)
    corners = spine_corners(rng, height, width)  # (17, 4, 2) TL, TR, BL, BR
    image = _render(rng, corners, height, width, clean)
    pixel_mm = FIELD_OF_VIEW_MM / height
    return PhantomSample(
        image=image,
        points=corners.reshape(-1, 2).copy(),
        spacing=(pixel_mm, pixel_mm),
        names=list(SPINE.names),
    )


# --------------------------------------------------------------------------- geometry


def spine_corners(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(17, 4, 2) vertebra corners (TL, TR, BL, BR) along a random smooth scoliotic curve."""
    n = len(SPINE_VERTEBRAE)
    top = height * rng.uniform(0.03, 0.14)
    bottom = height * rng.uniform(0.78, 0.93)
    centre_x = width * rng.uniform(0.40, 0.60)
    # C (one half-wave), S (two) or triple lateral curve; amplitude skewed to mild curves
    half_waves = rng.choice([1, 2, 3], p=[0.45, 0.45, 0.10])
    amplitude = width * 0.16 * rng.uniform(0, 1) ** 1.2 * rng.choice([-1, 1])
    phase = rng.uniform(-0.25, 0.25)
    tilt = width * rng.uniform(-0.04, 0.04)

    heights_rel = 1.0 + rng.uniform(0.35, 0.65) * np.arange(n) / (n - 1)  # bodies grow downwards
    discs_rel = rng.uniform(0.22, 0.36) * heights_rel[:-1] * rng.uniform(0.85, 1.15, n - 1)
    aspect = np.linspace(rng.uniform(1.6, 1.9), rng.uniform(1.9, 2.4), n) * rng.uniform(0.95, 1.05, n)

    for _ in range(20):  # shrink the curve until the whole spine fits the image
        t = np.linspace(0.0, 1.0, 2001)
        x = centre_x + tilt * (t - 0.5) + amplitude * np.sin(np.pi * (half_waves * t + phase))
        y = top + (bottom - top) * t
        corners = _place_vertebrae(x, y, heights_rel, discs_rel, aspect, rng)
        if corners[..., 0].min() > 0.04 * width and corners[..., 0].max() < 0.96 * width:
            return corners
        amplitude *= 0.75
        centre_x = 0.5 * (centre_x + width / 2)
        aspect *= 0.95
    return corners


def _place_vertebrae(x, y, heights_rel, discs_rel, aspect, rng) -> np.ndarray:
    """Stack bodies and discs along the curve (x(t), y(t)) by arc length."""
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    unit = arc[-1] / (heights_rel.sum() + discs_rel.sum())
    edges = []  # arc positions of (top endplate, bottom endplate) per vertebra
    s = 0.0
    for v, h in enumerate(heights_rel):
        edges.append((s, s + h * unit))
        s += h * unit + (discs_rel[v] * unit if v < len(discs_rel) else 0.0)
    edges = np.array(edges)

    dx, dy = np.gradient(x), np.gradient(y)

    def frame(s_at):
        px, py = np.interp(s_at, arc, x), np.interp(s_at, arc, y)
        tx, ty = np.interp(s_at, arc, dx), np.interp(s_at, arc, dy)
        norm = np.hypot(tx, ty)
        return np.stack([px, py], -1), np.stack([ty, -tx], -1) / norm[:, None]  # point, rightward normal

    widths = heights_rel * unit * aspect
    corners = np.empty((len(heights_rel), 4, 2))
    for j, side in enumerate(("top", "bottom")):
        mid, normal = frame(edges[:, j])
        # endplates are not exactly perpendicular to the curve: small wedging per endplate
        jitter = np.deg2rad(rng.normal(0.0, 2.0, len(heights_rel)))
        c, s_ = np.cos(jitter), np.sin(jitter)
        normal = np.stack([c * normal[:, 0] - s_ * normal[:, 1], s_ * normal[:, 0] + c * normal[:, 1]], -1)
        half = 0.5 * widths * (rng.uniform(0.96, 1.04, len(widths)) if side == "top" else 1.0)
        corners[:, 2 * j] = mid - half[:, None] * normal  # left
        corners[:, 2 * j + 1] = mid + half[:, None] * normal  # right
    return corners


# -------------------------------------------------------------------------- rendering


def _render(rng, corners, height, width, clean) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    centres = corners.mean(axis=1)  # (17, 2)
    body_h = np.linalg.norm(corners[:, 2] - corners[:, 0], axis=1)
    body_w = np.linalg.norm(corners[:, 1] - corners[:, 0], axis=1)

    image = _soft_tissue(rng, xx, yy, centres, body_w, height, width)
    image += _ribs_and_pelvis(rng, corners, centres, body_h, body_w, height, width)
    bone = rng.uniform(0.22, 0.38)
    cortex = rng.uniform(0.08, 0.18)
    for v in range(len(corners)):
        _draw_vertebra(image, corners[v], bone, cortex)

    if not clean:
        image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.1))
        image *= _mottle(rng, height, width, 0.06)
        image += rng.normal(0.0, rng.uniform(0.008, 0.03), image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.75, 1.35)  # film contrast
    return image.astype(np.float32)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _soft_tissue(rng, xx, yy, centres, body_w, height, width) -> np.ndarray:
    """Air, a torso silhouette, darker lungs above the diaphragm, a paraspinal band."""
    spine_x = np.interp(yy[:, 0], centres[:, 1], centres[:, 0])[:, None]
    # the body is straight even when the spine is not: no silhouette shortcut to the curve
    body_x = centres[:, 0].mean() + width * rng.uniform(-0.04, 0.04)
    air = rng.uniform(0.02, 0.10)
    tissue = rng.uniform(0.30, 0.45)
    half = width * (rng.uniform(0.36, 0.46) + 0.04 * np.sin(np.pi * yy[:, :1] / height))
    torso = _sigmoid((half - np.abs(xx - body_x)) / 6.0)
    image = air + (tissue - air) * torso * (1.0 + 0.25 * yy / height)  # abdomen denser than chest

    diaphragm = height * rng.uniform(0.45, 0.6)
    lung_depth = rng.uniform(0.12, 0.22)
    for side in (-1, 1):
        cx = body_x + side * width * rng.uniform(0.2, 0.26)
        rx, ry = width * rng.uniform(0.13, 0.18), diaphragm * 0.55
        r = ((xx - cx) / rx) ** 2 + ((yy - diaphragm * 0.5) / ry) ** 2
        image -= lung_depth * _sigmoid((1.0 - r) * 8.0)

    band_half = np.interp(yy[:, 0], centres[:, 1], body_w)[:, None] * 0.75
    image += 0.05 * _sigmoid((band_half - np.abs(xx - spine_x)) / 4.0)
    return image.astype(np.float32)


def _ribs_and_pelvis(rng, corners, centres, body_h, body_w, height, width) -> np.ndarray:
    """Thin bright bands: 12 rib pairs from the thoracic bodies, iliac crests, sacrum."""
    rib_w = 0.07 * body_h[:12].mean()  # Gaussian sigma of a rib's cross-section
    ribs = np.zeros((height, width), np.float32)
    rib_len = width * rng.uniform(0.28, 0.38)
    for v in range(12):
        for side, (a, b) in ((-1, (0, 2)), (1, (1, 3))):
            start = 0.5 * (corners[v, a] + corners[v, b])  # middle of the lateral edge
            start = start + np.array([side * 0.12 * body_w[v], 0.0])
            length = rib_len * (0.75 + 0.25 * min(v, 6) / 6) * rng.uniform(0.9, 1.1)
            drop = rng.uniform(0.45, 0.65)
            u = np.linspace(0, 1, 400)
            _splat_curve(ribs, start[0] + side * length * u, start[1] + length * (0.05 * u + drop * u**2))

    crests = np.zeros((height, width), np.float32)
    l5 = corners[-1]
    for side in (-1, 1):  # iliac crests
        cx = centres[-1, 0] + side * width * rng.uniform(0.24, 0.3)
        cy = l5[2:, 1].mean() + height * rng.uniform(0.05, 0.09)
        ang = np.linspace(np.pi, 2 * np.pi, 600)
        _splat_curve(crests, cx + width * 0.2 * np.cos(ang), cy + height * 0.07 * np.sin(ang))

    layer = 0.13 * _band(ribs, rib_w) + 0.18 * _band(crests, 2 * rib_w)

    # sacrum: a tapering body below L5, one disc gap lower
    gap = 0.3 * body_h[-1]
    down = l5[2:].mean(0) - l5[:2].mean(0)
    down /= np.linalg.norm(down)
    bl, br = l5[2] + gap * down, l5[3] + gap * down
    tip = 0.5 * (bl + br) + down * body_h[-1] * 3.0
    sacrum = np.array([bl, br, 0.5 * (br + tip), 0.5 * (bl + tip)])
    _draw_polygon(layer, sacrum, 0.15, 0.05)
    return layer.astype(np.float32)


def _splat_curve(canvas, x, y) -> None:
    """Add points resampled every half pixel along a polyline (uniform density at any angle)."""
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    s = np.arange(0.0, arc[-1], 0.5)
    px, py = np.rint(np.interp(s, arc, x)).astype(int), np.rint(np.interp(s, arc, y)).astype(int)
    ok = (px >= 0) & (px < canvas.shape[1]) & (py >= 0) & (py < canvas.shape[0])
    np.add.at(canvas, (py[ok], px[ok]), 1.0)


def _band(splats, sigma) -> np.ndarray:
    """Blur splatted curves into bands of peak ~1 (2 splats per pixel of length)."""
    peak = 2.0 / (np.sqrt(2 * np.pi) * sigma)
    return np.clip(ndimage.gaussian_filter(splats, sigma) / peak, 0.0, 1.0)


def _draw_vertebra(image, corners, bone, cortex) -> None:
    """One vertebral body (TL, TR, BL, BR) with pedicles and spinous process, added in place."""
    quad = corners[[0, 1, 3, 2]]  # TL, TR, BR, BL around the edge
    box = _draw_polygon(image, quad, bone, cortex)
    if box is None:
        return
    (y0, y1, x0, x1), u, v = box
    w = np.linalg.norm(corners[1] - corners[0])
    h = np.linalg.norm(corners[2] - corners[0])
    inside = _edge_distance(quad, *np.meshgrid(np.arange(x0, x1), np.arange(y0, y1))) > 1.5
    region = image[y0:y1, x0:x1]
    for side in (-1, 1):  # pedicles: bright rings in the upper lateral body
        r = np.sqrt(((u - side * 0.3 * w) / (0.09 * w)) ** 2 + ((v + 0.12 * h) / (0.17 * h)) ** 2)
        region += inside * 0.6 * cortex * np.exp(-(((r - 1.0) / 0.3) ** 2))
    r = np.sqrt((u / (0.05 * w)) ** 2 + ((v - 0.1 * h) / (0.22 * h)) ** 2)  # spinous process
    region += inside * 0.5 * cortex * np.exp(-(r**2))


def _edge_distance(quad, xx, yy):
    """Signed distance to a convex polygon's edges (positive inside, exact inside)."""
    centroid = quad.mean(0)
    d = np.full(xx.shape, np.inf, np.float32)
    for a, b in zip(quad, np.roll(quad, -1, axis=0)):
        n = np.array([b[1] - a[1], a[0] - b[0]]) / np.linalg.norm(b - a)
        if np.dot(centroid - a, n) < 0:
            n = -n
        d = np.minimum(d, (xx - a[0]) * n[0] + (yy - a[1]) * n[1])
    return d


def _draw_polygon(image, quad, fill, rim):
    """Add an anti-aliased convex polygon with a brighter cortical rim; returns its box + local frame."""
    h, w = image.shape
    x0, y0 = np.floor(quad.min(0)).astype(int) - 2
    x1, y1 = np.ceil(quad.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    xx, yy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    d = _edge_distance(quad, xx, yy)
    coverage = np.clip(d + 0.5, 0.0, 1.0)  # pixel-area anti-aliasing of the edge
    shell = np.exp(-np.maximum(d, 0.0) / 2.5)
    image[y0:y1, x0:x1] += coverage * (fill + rim * shell)
    # local frame: u along the top edge (rightwards), v down the body
    centre = quad.mean(0)
    right = quad[1] - quad[0]
    right /= np.linalg.norm(right)
    down = np.array([-right[1], right[0]])
    u = (xx - centre[0]) * right[0] + (yy - centre[1]) * right[1]
    v = (xx - centre[0]) * down[0] + (yy - centre[1]) * down[1]
    return (y0, y1, x0, x1), u, v


def _mottle(rng, height, width, amount) -> np.ndarray:
    """Low-frequency multiplicative texture (uneven exposure, overlapping tissue)."""
    knots_y, knots_x = max(height // 64, 2), max(width // 64, 2)
    coarse = rng.normal(0.0, 1.0, (knots_y, knots_x))
    # separable smooth interpolation: Gaussian weights from each pixel to the coarse knots
    field = _smooth_weights(height, knots_y) @ coarse @ _smooth_weights(width, knots_x).T
    return (1.0 + amount * field).astype(np.float32)


def _smooth_weights(n, knots) -> np.ndarray:
    pos = (np.arange(n) + 0.5) * knots / n - 0.5
    w = np.exp(-0.5 * (pos[:, None] - np.arange(knots)[None, :]) ** 2)
    return w / w.sum(axis=1, keepdims=True)


# ------------------------------------------------------------- propagation task

HIDDEN_TASK_VERTEBRAE = 4


def hidden_vertebra_names(vertebrae: int = HIDDEN_TASK_VERTEBRAE) -> list[str]:
    return list(spine_template([f"V{v + 1}" for v in range(vertebrae)]).names)


def make_hidden_vertebra_phantom(seed: int, size: int = 128, vertebrae: int = HIDDEN_TASK_VERTEBRAE) -> PhantomSample:
    """A task on which a click is informative: a short stack of vertebral bodies, one of
    which is not drawn and is displaced sideways by a random amount.

    From the image alone the hidden body's corners cannot be found (its neighbours say
    only roughly where it is in y); one click on any of its corners fixes the other three.
    A model that ignores hints stays off by the displacement, so a test can tell whether
    training taught the hint path anything (Testing/test_propagation.py).
    """
    rng = np.random.default_rng(seed)
    pitch = size * 0.8 / vertebrae  # vertebra + disc
    body_h, body_w = pitch * rng.uniform(0.55, 0.7), size * rng.uniform(0.25, 0.32)
    centre_x = size * rng.uniform(0.4, 0.6) + rng.normal(0.0, size * 0.02, vertebrae).cumsum()
    top = size * 0.1 + rng.uniform(-0.05, 0.05) * size
    corners = np.empty((vertebrae, 4, 2))
    for v in range(vertebrae):
        y0 = top + v * pitch
        tilt = np.deg2rad(rng.normal(0.0, 4.0))
        half = 0.5 * body_w * np.array([np.cos(tilt), np.sin(tilt)])
        centre = np.array([centre_x[v], y0 + 0.5 * body_h])
        down = 0.5 * body_h * np.array([-np.sin(tilt), np.cos(tilt)])
        corners[v] = [centre - half - down, centre + half - down, centre - half + down, centre + half + down]
    hidden = int(rng.integers(vertebrae))
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.22) * size
    corners[hidden, :, 0] += shift
    corners[hidden, :, 0] = np.clip(corners[hidden, :, 0], 2.0, size - 3.0)

    image = np.full((size, size), rng.uniform(0.05, 0.15), np.float32)
    bone, cortex = rng.uniform(0.35, 0.5), rng.uniform(0.1, 0.2)
    for v in range(vertebrae):
        if v != hidden:
            _draw_vertebra(image, corners[v], bone, cortex)
    image = ndimage.gaussian_filter(image, 0.7)
    image += rng.normal(0.0, 0.02, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return PhantomSample(
        image=image, points=corners.reshape(-1, 2), spacing=(1.0, 1.0), names=hidden_vertebra_names(vertebrae)
    )


# --------------------------------------------------------------------------- datasets


def write_png(image: np.ndarray, path) -> Path:
    """A phantom image ([0, 1] float) as an 8-bit grey PNG, which stores no spacing: Slicer
    and SimpleITK load it with 1 mm pixels at origin 0."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.round(image * 255).astype(np.uint8)), str(path))
    return Path(path)


def write_phantom_dataset(folder, n: int, seed: int = 0, height: int = 1024, width: int = 512) -> list[Path]:
    """Write ``n`` phantoms as a generic landmark folder: PNG + ``.mrk.json`` each + ``landmarks.json``.

    PNG stores no spacing, so the markups use the geometry the PNG loads with
    (spacing 1, origin 0), exactly like Slicer would show it. Returns the image paths.
    """
    from .markups import write_markups_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    template = SPINE.to_json() | {
        "description": "AP spine: 4 corners of T1..L5 (top-left, top-right, bottom-left, bottom-right)"
    }
    (folder / "landmarks.json").write_text(json.dumps(template, indent=2) + "\n")
    paths = []
    for i in range(n):
        sample = make_spine_phantom(seed + i, height, width)
        stem = f"phantom_{seed + i:05d}"
        png = write_png(sample.image, folder / f"{stem}.png")
        write_markups_json(
            folder / (stem + POINTS_JSON),
            sample.points,
            sample.names,
            states=[USER_FIXED] * len(sample.names),
            node_name=stem,
        )
        paths.append(png)
    return paths
