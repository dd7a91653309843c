"""`compare`: two evaluate outputs of the same images, image by image (#25's no-harm rule)."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from interactive_keypoints.cli import main
from interactive_keypoints.errors import UsageError
from interactive_keypoints.evaluate.compare import compare_runs
from interactive_keypoints.evaluate.outputs import write_per_image_csv
from interactive_keypoints.metrics import cobb_smape

CLICKS = 4
ANGLES = ("Cobb PT", "Cobb MT", "Cobb TL")


def write_run(folder, ids, mre, angles=None, truth=None):
    """An evaluate --out folder as evaluate writes it: per_image.csv through its own writer,
    measurements_per_image.csv in its columns."""
    folder.mkdir()
    curves = [SimpleNamespace(model=list(row), manual=list(row)) for row in mre]
    write_per_image_csv(folder / "per_image.csv", curves, [SimpleNamespace(id=i) for i in ids])
    if angles is not None:
        with open(folder / "measurements_per_image.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "measurement", "truth"] + [f"clicks_{c}" for c in range(CLICKS)])
            for i, image in enumerate(ids):
                for j, name in enumerate(ANGLES):
                    writer.writerow([image, name, truth[i, j]] + list(angles[i, :, j]))
    return folder


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"image-{i}" for i in range(40)]
    mre = rng.uniform(5, 50, size=(40, CLICKS))
    truth = rng.uniform(5, 40, size=(40, 3))
    angles = truth[:, None, :] + rng.normal(0, 3, size=(40, CLICKS, 3))
    worse = mre.copy()
    worse[:, 2] += 1.0  # every image 1 px worse after 2 clicks, the same elsewhere
    order = rng.permutation(40)  # B lists its images in another order
    a = write_run(tmp_path / "a", ids, mre, angles, truth)
    b = write_run(tmp_path / "b", [ids[i] for i in order], worse[order], angles[order], truth[order])
    return a, b, angles, truth


def test_a_difference_every_image_shares_is_found_at_its_click_count_only(runs):
    a, b, _, _ = runs
    mre, cobb = compare_runs(a, b, resamples=500)
    assert mre.worse_at() == [2] and mre.better_at() == []
    assert mre.mean[2] == pytest.approx(1.0, abs=1e-3)
    assert mre.mean[0] == pytest.approx(0.0, abs=1e-3)
    assert cobb.worse_at() == [] and cobb.better_at() == []


def test_cobb_smape_is_the_challenge_score_image_by_image(runs):
    a, _, angles, truth = runs
    _, cobb = compare_runs(a, a, resamples=10)
    for c in range(CLICKS):
        assert cobb.a[c] == pytest.approx(cobb_smape(angles[:, c], truth), abs=1e-3)  # CSV rounding aside


def test_a_shifted_noisy_difference_has_an_interval_that_shrinks_with_it(tmp_path):
    """A small shift among noise is not called; a large one is."""
    rng = np.random.default_rng(2)
    ids = [f"i{k}" for k in range(60)]
    base = rng.uniform(10, 40, size=(60, CLICKS))
    shifted = base + rng.normal(0, 5, size=base.shape) + np.array([0.0, 0.2, 4.0, -4.0])
    a = write_run(tmp_path / "a", ids, base)
    b = write_run(tmp_path / "b", ids, shifted)
    (mre,) = compare_runs(a, b, resamples=2000)
    assert mre.worse_at() == [2] and mre.better_at() == [3]
    assert mre.low[1] < 0 < mre.high[1]


def test_the_command_prints_the_table_and_writes_json(runs, tmp_path, capsys):
    a, b, _, _ = runs
    out = tmp_path / "diff.json"
    assert main(["compare", str(a), str(b), "--resamples", "200", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("B worse") == 1 and "Cobb SMAPE %" in printed
    saved = json.loads(out.read_text())
    assert [r["quantity"] for r in saved] == ["MRE px", "Cobb SMAPE %"]


def test_runs_of_different_images_are_refused_by_name(runs, tmp_path, capsys):
    a, _, _, _ = runs
    other = write_run(tmp_path / "other", ["elsewhere"], np.ones((1, CLICKS)))
    with pytest.raises(UsageError, match="evaluated different images"):
        compare_runs(a, other)
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "per_image.csv not found" in capsys.readouterr().err
