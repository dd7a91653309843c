"""MONAI dictionary transforms that move an image and its keypoints together.

Geometry is accumulated, not applied step by step: each random transform multiplies a 3 x 3
matrix ``d["geometry"]`` that maps source pixels (x, y) to output pixels (x, y), and
:class:`ApplyGeometryd` resamples the image ONCE with MONAI's ``Affine`` and moves the points
with the same matrix. One interpolation per sample, and points and pixels cannot drift apart.

Keys: ``image`` (C, H, W), ``points`` (K, 2) (x, y) pixels with pixel centres at integers.

Why not MONAI's own point handling (``Resized`` / ``RandRotated`` / ``RandZoomd`` /
``RandFlipd`` in a ``Compose(lazy=True)``, then ``ApplyTransformToPointsd``)? Where it runs,
its points are as exact as ours (both under 1e-4 px: ``pytest -s Testing/test_augment.py
-k "exactly or monai"``), but MONAI 1.6's lazy resampling of a 2-D image fails with "mat1
and mat2 shapes cannot be multiplied (3x3 and 4x4)" whenever a random spatial transform does
not fire (half the samples here) and when a resize keeps the size; non-lazy, it would
interpolate once per step. ``test_monai_lazy_points`` turns red when MONAI runs these cases:
then this module can hand its geometry to MONAI.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Affine,
    Compose,
    RandAdjustContrastd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Transform,
)

from .conventions import inside_image
from .imaging import about_centre, resize_matrix

GEOMETRY = "geometry"  # (3, 3) float64: source pixel (x, y, 1) -> output pixel
OUTPUT_SIZE = "output_size"  # (H, W) of the output image


# ------------------------------------------------------------------ matrix helpers


def transform_points(points, matrix) -> np.ndarray:
    """Apply a (3, 3) (x, y) pixel matrix to (..., 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def rotation_matrix(degrees: float, size) -> np.ndarray:
    """Rotation about the image centre; positive = counter-clockwise as seen on screen (y down)."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return about_centre(np.array([[c, s], [-s, c]]), size)


def zoom_matrix(factor: float, size) -> np.ndarray:
    return about_centre(np.eye(2) * factor, size)


def hflip_matrix(size) -> np.ndarray:
    return about_centre(np.diag([-1.0, 1.0]), size)


def monai_affine(matrix, source_size, output_size) -> np.ndarray:
    """Our forward (x, y) pixel matrix as the matrix MONAI's ``Affine`` expects.

    MONAI's ``Affine(affine=A, normalized=False)`` is a backward map on (row, col)
    coordinates measured from each image's centre ((size - 1) / 2): it gives, for every output
    pixel, where to sample in the source. So A = C_src . P . M^-1 . P . C_out^-1, with P
    swapping x and y and C_* shifting to centred coordinates.
    """
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])

    def centre_shift(size):  # pixel (row, col) -> centred (row, col)
        shift = np.eye(3)
        shift[:2, 2] = -(np.asarray(size, dtype=np.float64) - 1) / 2
        return shift

    backward_xy = np.linalg.inv(matrix)
    return centre_shift(source_size) @ swap @ backward_xy @ swap @ np.linalg.inv(centre_shift(output_size))


# ---------------------------------------------------------------------- transforms


class ResizeGeometryd(Transform):
    """Start the geometry: the whole image resized to ``output_size`` (H, W)."""

    def __init__(self, output_size, image_key: str = "image"):
        self.output_size = tuple(int(v) for v in output_size)
        self.image_key = image_key

    def __call__(self, data):
        d = dict(data)
        d[GEOMETRY] = resize_matrix(tuple(d[self.image_key].shape[-2:]), self.output_size)
        d[OUTPUT_SIZE] = self.output_size
        return d


class RandRotateGeometryd(RandomizableTransform):
    """With probability ``prob``, rotate about the output centre by U(-max_degrees, max_degrees)."""

    def __init__(self, max_degrees: float = 15.0, prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        self.max_degrees = float(max_degrees)
        self.degrees = 0.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.degrees = self.R.uniform(-self.max_degrees, self.max_degrees)

    def __call__(self, data):
        self.randomize()
        d = dict(data)
        if self._do_transform:
            d[GEOMETRY] = rotation_matrix(self.degrees, d[OUTPUT_SIZE]) @ d[GEOMETRY]
        return d


class RandZoomGeometryd(RandomizableTransform):
    """With probability ``prob``, scale about the output centre by U(min_zoom, max_zoom)."""

    def __init__(self, min_zoom: float = 0.9, max_zoom: float = 1.2, prob: float = 0.5):
        RandomizableTransform.__init__(self, prob)
        self.min_zoom, self.max_zoom = float(min_zoom), float(max_zoom)
        self.factor = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self.factor = self.R.uniform(self.min_zoom, self.max_zoom)

    def __call__(self, data):
        self.randomize()
        d = dict(data)
        if self._do_transform:
            d[GEOMETRY] = zoom_matrix(self.factor, d[OUTPUT_SIZE]) @ d[GEOMETRY]
        return d


def flip_permutation(num_keypoints: int, flip_pairs) -> np.ndarray:
    """Index array: after a mirror, keypoint k is the mirror of what was keypoint perm[k]."""
    perm = np.arange(num_keypoints)
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


class RandFlipKeypointsd(RandomizableTransform):
    """With probability ``prob``, mirror left-right and swap the paired keypoint indices.

    ``keypoint_keys`` are per-keypoint arrays (first axis K) reordered with the points, so
    that the "left" channel still holds the left landmark after the flip (a key the sample
    lacks is left out). Sets ``flipped``.
    """

    def __init__(self, flip_pairs, prob: float = 0.5, keypoint_keys=("points", "labelled")):
        RandomizableTransform.__init__(self, prob)
        self.flip_pairs = [tuple(p) for p in flip_pairs]
        self.keypoint_keys = tuple(keypoint_keys)

    def __call__(self, data):
        self.randomize(None)
        d = dict(data)
        d["flipped"] = self._do_transform
        if self._do_transform:
            d[GEOMETRY] = hflip_matrix(d[OUTPUT_SIZE]) @ d[GEOMETRY]
            perm = flip_permutation(len(d[self.keypoint_keys[0]]), self.flip_pairs)
            for key in self.keypoint_keys:
                if key in d:
                    d[key] = d[key][perm]
        return d


class ApplyGeometryd(Transform):
    """Resample the image once with the accumulated matrix and move the points with it.

    Samples outside the source take the value ``fill`` (e.g. the black level of the
    normalised image). Adds ``visible`` (K,) bool: the point is inside the output image,
    and ``to_output`` (3, 3): the applied matrix.
    """

    def __init__(self, image_key: str = "image", points_key: str = "points", fill: float = 0.0, mode: str = "bilinear"):
        self.image_key, self.points_key = image_key, points_key
        self.fill, self.mode = float(fill), mode

    def __call__(self, data):
        d = dict(data)
        matrix, output_size = d.pop(GEOMETRY), tuple(d.pop(OUTPUT_SIZE))
        image = torch.as_tensor(d[self.image_key], dtype=torch.float32)
        source_size = tuple(image.shape[-2:])
        if source_size != output_size or not np.allclose(matrix, np.eye(3)):
            resample = Affine(
                affine=monai_affine(matrix, source_size, output_size),
                spatial_size=output_size,
                normalized=False,
                mode=self.mode,
                padding_mode="zeros",
                image_only=True,
            )
            # zero padding, shifted so that outside the source reads as `fill`
            image = plain_tensor(resample(image - self.fill)) + self.fill
        d[self.image_key] = plain_tensor(image)
        points = transform_points(d[self.points_key], matrix)
        d[self.points_key] = points
        d["visible"] = inside_image(points, output_size)
        d["to_output"] = matrix
        return d


class RandOccludeKeypointd(RandomizableTransform):
    """With probability ``prob``, blank a square around one random visible keypoint.

    The points under the patch can then only be found from their neighbours or from a
    click: a training image on which clicks carry information, as they do on the hard
    parts of unseen images. The square's side is U(``min_size``, ``max_size``) times the
    image height, its centre jittered by up to a quarter side; it is filled with ``fill``.
    Run after :class:`ApplyGeometryd` (needs ``visible`` and output-frame points).
    """

    def __init__(self, prob: float = 0.5, min_size: float = 0.1, max_size: float = 0.25, fill: float = 0.0):
        RandomizableTransform.__init__(self, prob)
        self.min_size, self.max_size, self.fill = float(min_size), float(max_size), float(fill)
        self.box: tuple[int, int, int, int] | None = None

    def randomize(self, data) -> None:
        super().randomize(None)
        self.box = None
        candidates = np.flatnonzero(data["visible"])
        if not self._do_transform or len(candidates) == 0:
            return
        h, w = data["image"].shape[-2:]
        centre = np.asarray(data["points"][self.R.choice(candidates)], dtype=np.float64)
        side = self.R.uniform(self.min_size, self.max_size) * h
        centre = centre + self.R.uniform(-0.25, 0.25, 2) * side
        x0, y0 = np.floor(centre - side / 2).astype(int)
        x1, y1 = np.ceil(centre + side / 2).astype(int)
        self.box = (max(y0, 0), min(y1, h), max(x0, 0), min(x1, w))

    def __call__(self, data):
        d = dict(data)
        self.randomize(d)
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            image = torch.as_tensor(d["image"]).clone()
            image[..., y0:y1, x0:x1] = self.fill
            d["image"] = image
        return d


def plain_tensor(image) -> torch.Tensor:
    """A float32 torch tensor without MONAI metadata (collates and prints like any tensor)."""
    if hasattr(image, "as_tensor"):
        image = image.as_tensor()
    return torch.as_tensor(image, dtype=torch.float32)


# ------------------------------------------------------------------- pipelines


def geometry_transforms(
    output_size,
    flip_pairs=(),
    flip_allowed: bool = True,
    augment: bool = True,
    fill: float = 0.0,
    max_degrees: float = 15.0,
    zoom=(0.9, 1.2),
    prob: float = 0.5,
) -> list:
    """Resize to ``output_size`` plus (when ``augment``) the paper's rotation, zoom and flip."""
    steps = [ResizeGeometryd(output_size)]
    if augment:
        steps += [RandRotateGeometryd(max_degrees, prob), RandZoomGeometryd(zoom[0], zoom[1], prob)]
        if flip_allowed:
            steps.append(RandFlipKeypointsd(flip_pairs, prob))
    steps.append(ApplyGeometryd(fill=fill))
    return steps


def intensity_augmentations(prob: float = 0.5) -> list:
    """Brightness / contrast on the normalised image (after normalisation on purpose: a
    min-max normalisation would undo a linear change made before it)."""
    return [
        RandAdjustContrastd(keys="image", prob=prob, gamma=(0.7, 1.5)),
        RandScaleIntensityd(keys="image", factors=0.2, prob=prob),  # contrast about 0
        RandShiftIntensityd(keys="image", offsets=0.1, prob=prob),  # brightness
    ]


def training_transforms(
    output_size,
    flip_pairs=(),
    flip_allowed: bool = True,
    augment: bool = True,
    fill: float = 0.0,
    seed: int | None = 0,
    occlusion_prob: float = 0.0,
) -> Compose:
    """The per-sample pipeline: geometry (one resample), then occlusion around a keypoint
    (``occlusion_prob``, 0 = off) and brightness/contrast."""
    steps = geometry_transforms(output_size, flip_pairs, flip_allowed, augment, fill)
    if augment:
        if occlusion_prob > 0:
            steps.append(RandOccludeKeypointd(occlusion_prob, fill=fill))
        steps += intensity_augmentations()
    pipeline = Compose(steps)
    if seed is not None:
        pipeline.set_random_state(seed=seed)
    return pipeline
