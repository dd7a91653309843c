"""The procedural spine phantom: determinism, landmark order, landmarks on the drawn corners."""

import json

import numpy as np
import pytest
from scipy import ndimage

from interactive_keypoints.conventions import SPINE, LandmarkTemplate
from interactive_keypoints.imaging import load_radiograph
from interactive_keypoints.markups import read_markups_points
from interactive_keypoints.phantom import make_spine_phantom, write_phantom_dataset


@pytest.fixture(scope="module")
def samples():
    return [make_spine_phantom(seed) for seed in range(6)]


def test_sample_shape_and_range(samples):
    s = samples[0]
    assert s.image.shape == (1024, 512) and s.image.dtype == np.float32
    assert 0.0 <= s.image.min() and s.image.max() <= 1.0 and s.image.std() > 0.05
    assert s.points.shape == (68, 2)
    assert s.names == list(SPINE.names)
    assert s.spacing[0] == s.spacing[1] > 0


def test_other_sizes():
    s = make_spine_phantom(3, height=512, width=256)
    assert s.image.shape == (512, 256)
    assert (s.points >= 0).all() and (s.points[:, 0] < 256).all() and (s.points[:, 1] < 512).all()


def test_deterministic_per_seed(samples):
    again = make_spine_phantom(0)
    np.testing.assert_array_equal(again.image, samples[0].image)
    np.testing.assert_array_equal(again.points, samples[0].points)


def test_seeds_vary_position_scale_curvature_and_contrast(samples):
    centres = np.array([s.points[:, 0].mean() for s in samples])
    tops = np.array([s.points[0, 1] for s in samples])
    widths = np.array([np.linalg.norm(s.points[65] - s.points[64]) for s in samples])  # L5 top edge
    lateral = np.array([np.ptp(s.points.reshape(17, 4, 2).mean(1)[:, 0]) for s in samples])
    brightness = np.array([np.median(s.image) for s in samples])
    assert np.ptp(centres) > 20 and np.ptp(tops) > 20 and np.ptp(widths) > 8
    assert np.ptp(lateral) > 30  # straight and clearly curved spines
    assert np.ptp(brightness) > 0.05


def test_landmark_order(samples):
    for s in samples:
        c = s.points.reshape(17, 4, 2)  # TL, TR, BL, BR
        assert (c[:, 0, 0] < c[:, 1, 0]).all() and (c[:, 2, 0] < c[:, 3, 0]).all()  # left has smaller x
        assert (c[:, 0, 1] < c[:, 2, 1]).all() and (c[:, 1, 1] < c[:, 3, 1]).all()  # top above bottom
        top, bottom = c[:, :2, 1].mean(1), c[:, 2:, 1].mean(1)
        assert (np.diff(top) > 0).all()  # vertebrae go down
        assert (bottom[:-1] < top[1:]).all()  # a disc between neighbours
        h, w = s.image.shape
        assert (c[..., 0] > 0).all() and (c[..., 0] < w - 1).all()
        assert (c[..., 1] > 0).all() and (c[..., 1] < h - 1).all()


def _measured_corners(image, quad_tl_tr_bl_br):
    """Corners of the bright body around the given quad, found from the image alone.

    Threshold halfway between the body and its surroundings, keep the connected bright
    region at the body centre, and take its extreme pixel towards each corner.
    """
    c = quad_tl_tr_bl_br
    centre = c.mean(0)
    x0, y0 = np.floor(c.min(0)).astype(int) - 6
    x1, y1 = np.ceil(c.max(0)).astype(int) + 7
    window = image[y0:y1, x0:x1]
    outward = c - centre
    outward /= np.linalg.norm(outward, axis=1, keepdims=True)
    outside = [image[int(round(p[1])), int(round(p[0]))] for p in c + 5 * outward]
    inside = image[int(round(centre[1])), int(round(centre[0]))]
    bright = window > 0.5 * (inside + np.mean(outside))
    labels, _ = ndimage.label(bright)
    body = labels == labels[int(round(centre[1])) - y0, int(round(centre[0])) - x0]
    ys, xs = np.nonzero(body)
    pixels = np.column_stack([xs + x0, ys + y0]).astype(float)
    return np.array([pixels[np.argmax((pixels - centre) @ d)] for d in outward])


@pytest.mark.parametrize("seed", [0, 11])
def test_landmarks_are_the_drawn_corners(seed):
    s = make_spine_phantom(seed, clean=True)
    corners = s.points.reshape(17, 4, 2)
    errors = np.array([np.linalg.norm(_measured_corners(s.image, c) - c, axis=1) for c in corners])
    # the measured corner is a whole pixel just inside the edge: ~0.6 px on average
    assert errors.mean() < 0.9 and errors.max() < 2.0, (errors.mean(), errors.max())


def test_shifted_landmarks_would_be_caught():
    # the check above can fail: corners displaced by 4 px along the body are found off
    s = make_spine_phantom(11, clean=True)
    c = s.points.reshape(17, 4, 2)[8]
    shifted = c + np.array([4.0, 0.0])
    assert np.linalg.norm(_measured_corners(s.image, shifted) - shifted, axis=1).mean() > 2.5


def test_corners_are_bright_inside_dark_outside_on_noisy_images(samples):
    for s in samples:
        corners = s.points.reshape(17, 4, 2)
        for c in corners:
            direction = c - c.mean(0)
            direction /= np.linalg.norm(direction, axis=1, keepdims=True)
            smooth = ndimage.uniform_filter(s.image, 3)
            inside = [smooth[int(round(p[1])), int(round(p[0]))] for p in c - 3.5 * direction]
            outside = [smooth[int(round(p[1])), int(round(p[0]))] for p in c + 3.5 * direction]
            assert min(inside) > max(outside) + 0.03


def test_write_phantom_dataset(tmp_path):
    paths = write_phantom_dataset(tmp_path / "phantom", n=2, seed=5, height=256, width=128)
    assert [p.name for p in paths] == ["phantom_00005.png", "phantom_00006.png"]
    template = json.loads((tmp_path / "phantom" / "landmarks.json").read_text())
    assert LandmarkTemplate.from_json(template) == SPINE
    for i, png in enumerate(paths):
        sample = make_spine_phantom(5 + i, height=256, width=128)
        radiograph = load_radiograph(png)
        assert radiograph.size == (256, 128)
        assert np.abs(radiograph.array / 255.0 - sample.image).max() <= 0.5 / 255 + 1e-6
        marks = read_markups_points(png.with_name(png.stem + ".mrk.json"), radiograph.spacing, radiograph.origin)
        np.testing.assert_allclose(marks.points, sample.points, atol=1e-6)
        assert marks.names == list(SPINE.names)
