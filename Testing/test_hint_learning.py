"""Does the training recipe teach the hint path? A task on which only a click can help.

``phantom-hidden`` images show a short stack of vertebral bodies; one body is not drawn
and is displaced sideways by a random amount (``phantom.make_hidden_vertebra_phantom``).
From the image alone its corners are unknowable, so a model that ignores hints is off by
the displacement; after one click on a corner of the hidden body, a model whose hint path
learned something puts the other three corners near the truth. The comparison is with the
same trained network with its hints zeroed, which is its own 0-click prediction.
"""

import numpy as np
import pytest

from interactive_keypoints import train
from interactive_keypoints.clicks import worst_keypoint
from interactive_keypoints.data import get_dataset
from interactive_keypoints.model_io import load_model
from interactive_keypoints.session import KeypointSession

# a tiny network and a budget of a few CPU minutes (2 cores)
RECIPE = ["--dataset", "phantom-hidden", "--phantom-images", "256", "--width", "8", "--input", "64x64",
          "--ocr-channels", "32", "16", "--sigma", "3", "--batch-size", "8", "--lr", "2e-3",
          "--patience", "100", "--quiet"]  # fmt: skip
EPOCHS = "16"


def neighbour_errors_after_one_click(model, samples) -> tuple[float, float]:
    """(mean error of the clicked vertebra's other corners before the click, after it).

    The simulated user clicks the worst point at its true position (the protocol's user);
    on this task that is a corner of the hidden body.
    """
    before, after = [], []
    for sample in samples:
        session = KeypointSession(model, sample.image, spacing=sample.spacing)
        start = session.predict().points
        clicked = worst_keypoint(start, sample.points, np.zeros(len(start), bool))
        vertebra = range(4 * (clicked // 4), 4 * (clicked // 4) + 4)
        neighbours = [k for k in vertebra if k != clicked]
        refined = session.refine({clicked: sample.points[clicked]}).points
        before.append(np.linalg.norm(start[neighbours] - sample.points[neighbours], axis=1).mean())
        after.append(np.linalg.norm(refined[neighbours] - sample.points[neighbours], axis=1).mean())
    return float(np.mean(before)), float(np.mean(after))


def test_the_hidden_vertebra_is_unknowable_from_the_image():
    # the task is what it claims: the hidden body is far from where its neighbours put it
    val = get_dataset("phantom-hidden", split="val", num_images=32)
    offsets = []
    for sample in val.samples:
        corners = sample.points.reshape(-1, 4, 2)
        centres_x = corners[..., 0].mean(1)
        deviation = np.abs(centres_x - np.median(centres_x))
        offsets.append(deviation.max() / (128 * 0.15))
    assert min(offsets) > 0.8


@pytest.mark.slow
def test_one_click_moves_the_unclicked_corners_towards_the_truth(tmp_path):
    out = tmp_path / "model"
    assert train.main([*RECIPE, "--epochs", EPOCHS, "--out", str(out)]) == 0
    model = load_model(out)
    val = get_dataset("phantom-hidden", split="val", num_images=32)
    hints_zeroed, clicked = neighbour_errors_after_one_click(model, val.samples)
    # a model that ignores hints keeps the neighbours where they were (ratio 1.0)
    assert clicked < 0.5 * hints_zeroed, (hints_zeroed, clicked)
