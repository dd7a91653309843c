import numpy as np
import pytest
import torch
from monai.transforms import Compose

from interactive_keypoints import imaging
from interactive_keypoints.augment import (
    ApplyGeometryd,
    RandFlipKeypointsd,
    RandRotateGeometryd,
    RandZoomGeometryd,
    ResizeGeometryd,
    flip_permutation,
    geometry_transforms,
    training_transforms,
    transform_points,
)

# keypoints 0/1 and 2/3 are left/right pairs; 4 is on the midline
POINTS = np.array([[20.3, 30.7], [60.6, 33.2], [25.5, 140.1], [70.25, 150.8], [47.9, 95.4]])
PAIRS = [(0, 1), (2, 3)]
AMPLITUDES = np.array([1.0, 0.6, 0.9, 0.5, 0.75])  # each mark recognisable by its brightness


def marks_image(points, amplitudes, size=(200, 100), sigma=1.5):
    """Gaussian marks at sub-pixel positions: (1, H, W) float32."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    image = np.zeros(size)
    for (x, y), a in zip(points, amplitudes):
        image += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return image[np.newaxis].astype(np.float32)


def coordinates_image(size=(200, 100)):
    """(2, H, W): every pixel holds its own (x, y). Bilinear resampling is exact on it."""
    yy, xx = np.mgrid[0 : size[0], 0 : size[1]]
    return np.stack([xx, yy]).astype(np.float32)


def bilinear(image, xy):
    """(C, H, W) sampled at one (x, y) inside the image."""
    x0, y0 = int(np.floor(xy[0])), int(np.floor(xy[1]))
    fx, fy = xy[0] - x0, xy[1] - y0
    patch = image[:, y0 : y0 + 2, x0 : x0 + 2]
    return (patch * np.array([[(1 - fy) * (1 - fx), (1 - fy) * fx], [fy * (1 - fx), fy * fx]])).sum(axis=(1, 2))


def test_resize_matrix_is_the_imaging_mapping():
    m = imaging.resize_matrix((200, 100), (128, 64))
    np.testing.assert_allclose(transform_points(POINTS, m), imaging.to_input(POINTS, (200, 100), (128, 64)))


def test_points_follow_the_pixels_exactly():
    """The output image, sampled at a moved point, holds the source position of that point."""
    pipeline = Compose(geometry_transforms((128, 64), PAIRS, flip_allowed=True, augment=True))
    pipeline.set_random_state(seed=7)
    worst, checked, flips = 0.0, 0, 0
    for _ in range(25):
        out = pipeline({"image": coordinates_image(), "points": POINTS.copy()})
        flips += out["flipped"]
        source = POINTS[flip_permutation(len(POINTS), PAIRS)] if out["flipped"] else POINTS
        for moved, original in zip(out["points"], source):
            if (moved >= 0).all() and (moved < np.array([63, 127])).all():  # its 2 x 2 pixels are in the output
                worst = max(worst, np.abs(bilinear(out["image"].numpy(), moved) - original).max())
                checked += 1
    print(f"largest disagreement of points and pixels: {worst:.1e} source px ({checked} points)")
    assert worst < 0.01 and checked > 100
    assert 0 < flips < 25  # both branches exercised


MONAI_LAZY_2D_BUG = pytest.mark.xfail(
    raises=RuntimeError,
    strict=True,
    reason="MONAI 1.6 lazy resampling of a 2-D image mixes 3 x 3 and 4 x 4 affines; when this passes, see augment.py",
)


@pytest.mark.parametrize("size, rotate_prob", [
    ((128, 64), 1.0),
    pytest.param((128, 64), 0.0, marks=MONAI_LAZY_2D_BUG, id="a random transform that does not fire"),
    pytest.param((200, 100), None, marks=MONAI_LAZY_2D_BUG, id="a resize to the same size"),
])  # fmt: skip
def test_monai_lazy_points(size, rotate_prob):
    """Why augment.py keeps its own matrices: MONAI's points are exact where its lazy 2-D
    pipeline runs, but it does not run whenever a random step is skipped."""
    from monai.data import MetaTensor
    from monai.transforms import ApplyTransformToPointsd, RandRotated, Resized

    steps = [Resized("image", size, mode="bilinear", align_corners=False, anti_aliasing=False)]
    if rotate_prob is not None:
        steps.append(
            RandRotated("image", range_x=np.deg2rad(15), prob=rotate_prob, keep_size=True, align_corners=False)
        )
    steps.append(ApplyTransformToPointsd("points", refer_keys="image", dtype=torch.float64))
    pipeline = Compose(steps, lazy=True)
    pipeline.set_random_state(seed=0)
    out = pipeline(
        {
            "image": MetaTensor(torch.from_numpy(coordinates_image())),
            "points": torch.from_numpy(POINTS[:, ::-1].copy())[None],
        }
    )  # (1, K, (row, col))
    moved = out["points"][0].numpy()[:, ::-1]
    back = np.array([bilinear(out["image"].numpy(), xy) for xy in moved])
    print(f"MONAI: largest disagreement of points and pixels: {np.abs(back - POINTS).max():.1e} source px")
    assert np.abs(back - POINTS).max() < 0.01


def test_flip_keeps_left_channel_on_the_left_mark():
    image = marks_image(POINTS, AMPLITUDES)
    pipeline = Compose([ResizeGeometryd((200, 100)), RandFlipKeypointsd(PAIRS, prob=1.0), ApplyGeometryd()])
    out = pipeline({"image": image, "points": POINTS.copy()})
    moved, resampled = out["points"], out["image"][0].numpy()
    assert out["flipped"]
    for left, right in PAIRS:
        assert moved[left, 0] < moved[right, 0]
    # channel 0 now holds the mirror of the old right mark 1: its brightness says so
    np.testing.assert_allclose(moved[0], [99 - POINTS[1, 0], POINTS[1, 1]], atol=1e-9)
    assert resampled[round(moved[0, 1]), round(moved[0, 0])] == pytest.approx(AMPLITUDES[1], abs=0.03)
    np.testing.assert_allclose(moved[4], [99 - POINTS[4, 0], POINTS[4, 1]], atol=1e-9)


def test_flip_permutation():
    assert flip_permutation(5, PAIRS).tolist() == [1, 0, 3, 2, 4]


def test_rotation_and_zoom_about_the_centre():
    size = (101, 51)
    centre = np.array([[25.0, 50.0]])
    for step in (RandRotateGeometryd(max_degrees=15, prob=1.0), RandZoomGeometryd(prob=1.0)):
        step.set_random_state(seed=3)
        out = Compose([ResizeGeometryd(size), step, ApplyGeometryd()])(
            {"image": np.zeros((1, *size)), "points": centre}
        )
        np.testing.assert_allclose(out["points"], centre, atol=1e-9)
        assert not np.allclose(out["to_output"], np.eye(3))


def test_identity_geometry_leaves_image_untouched_and_fills_outside():
    image = np.random.default_rng(0).uniform(-1, 1, (1, 40, 30)).astype(np.float32)
    out = Compose([ResizeGeometryd((40, 30)), ApplyGeometryd(fill=-1.0)])({"image": image, "points": POINTS[:1] / 4})
    assert torch.equal(out["image"], torch.from_numpy(image))
    assert type(out["image"]) is torch.Tensor
    zoom_out = RandZoomGeometryd(0.5, 0.5, prob=1.0)
    out = Compose([ResizeGeometryd((40, 30)), zoom_out, ApplyGeometryd(fill=-1.0)])(
        {"image": image, "points": POINTS[:1] / 4}
    )
    assert out["image"][0, 0, 0].item() == pytest.approx(-1.0)  # corner now outside the source


def test_seeded_pipelines_repeat():
    image = marks_image(POINTS, AMPLITUDES)

    def run(seed):
        pipeline = training_transforms((128, 64), PAIRS, seed=seed)
        return [pipeline({"image": image, "points": POINTS.copy()}) for _ in range(4)]

    a, b, c = run(1), run(1), run(2)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["points"], y["points"])
    assert any(not np.array_equal(x["points"], z["points"]) for x, z in zip(a, c))


def test_no_flip_when_not_allowed():
    pipeline = Compose(geometry_transforms((128, 64), PAIRS, flip_allowed=False))
    pipeline.set_random_state(seed=0)
    assert not any(
        "flipped" in pipeline({"image": np.zeros((1, 200, 100)), "points": POINTS.copy()}) for _ in range(10)
    )


def test_occlusion_blanks_a_square_around_a_visible_keypoint():
    from interactive_keypoints.augment import RandOccludeKeypointd

    rng = np.random.default_rng(0)
    for seed in range(20):
        image = torch.ones(1, 64, 32)
        points = rng.uniform([0, 0], [31, 63], (6, 2))
        visible = np.array([True] * 5 + [False])
        occlude = RandOccludeKeypointd(prob=1.0, min_size=0.2, max_size=0.3, fill=-1.0)
        occlude.set_random_state(seed=seed)
        out = occlude({"image": image, "points": points, "visible": visible})["image"]
        blank = (out == -1.0)[0]
        assert blank.any() and (out[~blank[None]] == 1.0).all()
        rows, cols = np.nonzero(blank.numpy())
        assert rows.max() - rows.min() + 1 <= np.ceil(0.3 * 64) + 1  # at most the largest side
        # the square covers one of the visible keypoints (never only the invisible one)
        inside = [
            (round(y) in range(rows.min(), rows.max() + 1)) and (round(x) in range(cols.min(), cols.max() + 1))
            for x, y in points[:5]
        ]
        assert any(inside)
    untouched = RandOccludeKeypointd(prob=0.0)({"image": image, "points": points, "visible": visible})["image"]
    assert (untouched == image).all()
