"""Overlay PNGs draw what a clinician reads: vertebra outlines and Cobb lines, ceph names and analysis."""

import numpy as np
import pytest


@pytest.mark.slow
def test_a_spine_overlay_draws_each_vertebra_and_the_cobb_lines_with_their_values(phantom):
    from interactive_keypoints.measurements import measure
    from interactive_keypoints.overlay import overlay_figure

    figure = overlay_figure(phantom.image, phantom.points, measurement_set="aasce-cobb", spacing=phantom.spacing)
    axes = figure.axes[0]
    outlines = [line for line in axes.lines if len(line.get_xdata()) == 5]  # closed quadrilaterals
    assert len(outlines) == 17
    np.testing.assert_allclose(outlines[0].get_xydata()[:4], phantom.points[[0, 1, 3, 2]])
    labels = [text.get_text() for text in axes.texts]
    for record in measure(phantom.points, "aasce-cobb", spacing=phantom.spacing, image_height=phantom.image.shape[0]):
        assert f"{record.name} {record.value:.1f}\u00b0" in labels
    assert len([line for line in axes.lines if len(line.get_xdata()) == 2]) == 6  # two lines per angle
    plain = overlay_figure(phantom.image, phantom.points).axes[0]
    assert not plain.lines and not plain.texts


def test_a_ceph_overlay_names_every_point_and_lists_the_analysis():
    from interactive_keypoints.conventions import CEPH
    from interactive_keypoints.overlay import overlay_figure

    rng = np.random.default_rng(0)
    points = np.array([[200, 100], [380, 110], [330, 170], [120, 160], [350, 250], [340, 330], [345, 380],
                       [330, 400], [340, 395], [150, 330], [355, 290], [360, 285], [390, 270], [385, 320],
                       [375, 230], [380, 390], [210, 230], [360, 225], [130, 190]], float)  # fmt: skip
    image = rng.random((480, 420)).astype(np.float32)
    figure = overlay_figure(image, points, measurement_set="isbi-ceph", names=list(CEPH.names), spacing=(0.1, 0.1))
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert set(CEPH.names) <= set(texts)
    table = next(t for t in texts if t.startswith("SNA"))
    assert all(name in table for name in ("SNB", "ANB", "ODI", "APDI", "FHI", "FMA", "MW")) and "mm" in table
