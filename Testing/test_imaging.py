"""Radiograph loading, MONAI preprocessing and the original <-> input coordinate mapping."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from interactive_keypoints.imaging import (
    CoordinateMap,
    ImageError,
    Radiograph,
    check_size,
    load_radiograph,
    preprocess,
    preprocess_transform,
    to_input,
    to_original,
)

MINMAX = {"mode": "minmax", "range": [-1.0, 1.0]}


def _ramp(h=20, w=30, dtype=np.uint8):
    return (np.arange(h * w).reshape(h, w) % 251).astype(dtype)


def _write(path, array, spacing=None, is_vector=False):
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


# ------------------------------------------------------------------ coordinate mapping


def test_coordinate_round_trip_odd_sizes():
    rng = np.random.default_rng(0)
    original, network = (1571, 543), (512, 256)
    points = rng.uniform(-0.5, [542.5, 1570.5], size=(7, 68, 2))  # (N, K, 2)
    back = to_original(to_input(points, original, network), original, network)
    assert back.shape == points.shape
    assert np.abs(back - points).max() < 0.01
    single = points[0]  # (K, 2)
    assert np.abs(to_original(to_input(single, original, network), original, network) - single).max() < 0.01


def test_mapping_sends_pixel_edges_to_pixel_edges():
    original, network = (301, 157), (128, 64)
    edges = np.array([[-0.5, -0.5], [156.5, 300.5]])
    np.testing.assert_allclose(to_input(edges, original, network), [[-0.5, -0.5], [63.5, 127.5]])
    # image centre -> input centre (not a plain x * scale)
    np.testing.assert_allclose(to_input([[78.0, 150.0]], original, network), [[31.5, 63.5]])


def test_coordinate_map_object():
    cmap = CoordinateMap(original_size=(1000, 400), input_size=(512, 256))
    np.testing.assert_allclose(cmap.scale, [256 / 400, 512 / 1000])
    p = np.array([[10.25, 700.75]])
    np.testing.assert_allclose(cmap.to_original(cmap.to_input(p)), p)
    np.testing.assert_allclose(cmap.to_input(p), to_input(p, (1000, 400), (512, 256)))


# ---------------------------------------------------------------------- preprocessing


def _blob(h, w, x0, y0, sigma):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid(a):
    a = np.clip(a - a.min(), 0, None)
    yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
    return np.array([(a * xx).sum() / a.sum(), (a * yy).sum() / a.sum()])


@pytest.mark.parametrize(
    "original, network, dot",
    [
        ((301, 157), (128, 64), (77.3, 140.6)),  # downsampling, anti-aliased
        ((61, 47), (128, 96), (20.7, 33.2)),  # upsampling
        ((1025, 511), (256, 128), (301.4, 612.8)),  # strong downsampling
    ],
)
def test_bright_dot_lands_at_mapped_position(original, network, dot):
    image = _blob(*original, *dot, sigma=1.5)
    tensor = preprocess(Radiograph(image), network, {"mode": "minmax", "range": [0.0, 1.0]})
    assert type(tensor) is torch.Tensor and tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (1, *network)
    expected = to_input(np.array(dot), original, network)
    # a plain x * scale mapping would be off by 0.3-0.5 px here
    assert np.linalg.norm(_centroid(tensor[0].numpy()) - expected) < 0.1


def test_single_pixel_subpixel_dot_downsampled():
    # a dot at a sub-pixel position: bilinear splat onto 4 pixels, centroid (x0, y0)
    h, w, x0, y0 = 257, 131, 60.3, 171.8
    image = np.zeros((h, w), np.float32)
    ix, iy = int(x0), int(y0)
    fx, fy = x0 - ix, y0 - iy
    image[iy, ix], image[iy, ix + 1] = (1 - fx) * (1 - fy), fx * (1 - fy)
    image[iy + 1, ix], image[iy + 1, ix + 1] = (1 - fx) * fy, fx * fy
    network = (128, 64)
    out = preprocess(Radiograph(image), network, {"mode": "minmax", "range": [0.0, 1.0]})[0].numpy()
    assert np.linalg.norm(_centroid(out) - to_input([x0, y0], (h, w), network)) < 0.3


def test_minmax_range_and_percentile_clipping():
    image = np.add.outer(np.arange(64.0), np.arange(48.0)).astype(np.float32)  # smooth ramp
    out = preprocess(Radiograph(image), (32, 32), MINMAX)
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    assert out.min() < -0.9 and out.max() > 0.9

    image[5, 5] = 1e6  # one hot pixel must not squash the rest with percentile scaling
    pct = {"mode": "percentile", "lower": 0.5, "upper": 99.5, "range": [-1.0, 1.0]}
    out = preprocess_transform((64, 48), pct)(image[np.newaxis])
    assert out.max() <= 1.0 + 1e-6 and out.min() >= -1.0 - 1e-6
    assert out.std() > 0.3  # the ramp keeps its contrast


def test_unknown_intensity_mode():
    with pytest.raises(ValueError, match="unknown intensity mode"):
        preprocess_transform((32, 32), {"mode": "zscore"})


# ----------------------------------------------------------------------------- loading


def test_png_loads_with_unknown_spacing(tmp_path):
    r = load_radiograph(_write(tmp_path / "a.png", _ramp()))
    assert r.array.shape == (20, 30) and r.array.dtype == np.float32
    assert (r.height, r.width) == (20, 30)
    assert r.spacing == (1.0, 1.0) and not r.spacing_known
    assert r.path.endswith("a.png")
    np.testing.assert_array_equal(r.array, _ramp().astype(np.float32))


def test_explicit_spacing_overrides(tmp_path):
    r = load_radiograph(_write(tmp_path / "a.png", _ramp()), spacing=(0.1, 0.2))
    assert r.spacing == (0.1, 0.2) and r.spacing_known
    with pytest.raises(ImageError, match="spacing"):
        load_radiograph(_ramp(), spacing=(0.0, 1.0))


def test_jpeg_print_resolution_is_not_a_spacing(tmp_path):
    image = sitk.GetImageFromArray(_ramp())
    image.SetSpacing((0.0847, 0.0847))  # what a 300 dpi JPEG header turns into
    path = tmp_path / "a.jpg"
    sitk.WriteImage(image, str(path))
    r = load_radiograph(path)
    assert r.spacing == (1.0, 1.0) and not r.spacing_known


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_spacing_and_origin_kept_from_medical_formats(tmp_path, suffix):
    image = sitk.GetImageFromArray(_ramp(dtype=np.int16))
    image.SetSpacing((0.143, 0.2))
    image.SetOrigin((-5.0, 7.5))
    path = tmp_path / f"a{suffix}"
    sitk.WriteImage(image, str(path))
    r = load_radiograph(path)
    assert r.spacing == pytest.approx((0.143, 0.2)) and r.spacing_known
    np.testing.assert_allclose(r.origin, [-5.0, 7.5, 0.0])


def test_one_slice_volume_is_accepted(tmp_path):
    path = _write(tmp_path / "one.nrrd", _ramp(dtype=np.uint16)[np.newaxis], spacing=(0.3, 0.4, 2.0))
    r = load_radiograph(path)
    assert r.array.shape == (20, 30)
    assert r.spacing == pytest.approx((0.3, 0.4)) and r.spacing_known


def test_multi_slice_volume_is_refused(tmp_path):
    path = _write(tmp_path / "vol.nrrd", np.stack([_ramp()] * 3))
    with pytest.raises(ImageError, match=r"vol\.nrrd has 3 slices; InteractiveKeypoints needs a single 2-D"):
        load_radiograph(path)


def test_rgb_png_becomes_luminance(tmp_path):
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    rgb[0, 0] = (0, 0, 0)  # some contrast
    r = load_radiograph(_write(tmp_path / "rgb.png", rgb, is_vector=True))
    assert r.array.shape == (10, 12)
    assert r.array[5, 5] == pytest.approx(0.299 * 200 + 0.587 * 100 + 0.114 * 50, abs=1e-3)
    assert r.array[0, 0] == 0.0


def test_arrays_of_accepted_shapes():
    grey = _ramp()
    np.testing.assert_array_equal(load_radiograph(grey[np.newaxis]).array, grey)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    np.testing.assert_allclose(load_radiograph(rgba).array, grey, atol=1e-3)
    r = load_radiograph(grey)
    assert r.path is None and not r.spacing_known


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"not found: .*nothere\.png"):
        load_radiograph(tmp_path / "nothere.png")


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="is a folder"):
        load_radiograph(tmp_path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match=r"fake\.png is not an image file"):
        load_radiograph(path)


def test_truncated_png(tmp_path):
    path = _write(tmp_path / "cut.png", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageError, match=r"cut\.png"):
        load_radiograph(path)


def test_constant_image(tmp_path):
    path = _write(tmp_path / "flat.png", np.full((20, 30), 7, np.uint8))
    with pytest.raises(ImageError, match=r"flat\.png has the same value \(7\) in every pixel"):
        load_radiograph(path)


def test_non_finite_values(tmp_path):
    array = _ramp().astype(np.float32)
    array[3, 4] = np.nan
    path = _write(tmp_path / "nan.nrrd", array)
    with pytest.raises(ImageError, match=r"nan\.nrrd contains NaN"):
        load_radiograph(path)


@pytest.mark.parametrize("array", [np.zeros((0, 5)), np.zeros((4, 0, 3))])
def test_empty_image(array):
    with pytest.raises(ImageError, match="empty"):
        load_radiograph(array)


@pytest.mark.parametrize("array", [np.zeros((2, 3, 4, 5)), np.zeros((3, 8, 8))])
def test_wrong_array_shapes(array):
    with pytest.raises(ImageError, match="shape"):
        load_radiograph(array)


def test_check_size():
    r = load_radiograph(_ramp(20, 30))
    check_size(r, 600)
    with pytest.raises(ImageError, match="limit of 599 pixels"):
        check_size(r, 599)
