import numpy as np
import pytest
import torch

from interactive_keypoints.morphology import (
    MorphologySelection,
    all_triplets,
    angle_circular_std,
    morphology_loss,
    normalise_points,
    select_morphology,
)


def varying_labels(n=40, k=5, seed=0):
    """Random labels where keypoints 0 and 1 always sit 10 px apart (constant distance)."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 100, size=(n, k, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    points[:, 1] = points[:, 0] + 10 * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    return points, np.full((n, 2), 100.0)  # sizes (H, W)


def test_constant_distance_pair_is_selected_first():
    points, sizes = varying_labels()
    selection = select_morphology(points, sizes, n_pairs=3, n_triplets=3)
    assert selection.pairs[0].tolist() == [0, 1]
    assert selection.stats["pair_std"][0] == pytest.approx(0.0, abs=1e-12)
    assert len(selection.pairs) == 3 and len(selection.triplets) == 3


def test_high_variant_avoids_the_constant_pair():
    points, sizes = varying_labels()
    selection = select_morphology(points, sizes, variant="high", n_pairs=3, n_triplets=3)
    assert [0, 1] not in selection.pairs.tolist()
    assert min(selection.stats["pair_std"]) > 0.01


def test_constant_angle_triplet_has_zero_circular_std():
    # a right angle at keypoint 0 between rays to 1 and 2, at varying scale and rotation
    rng = np.random.default_rng(1)
    n = 30
    origin = rng.uniform(20, 80, size=(n, 2))
    t = rng.uniform(0, 2 * np.pi, n)
    r1, r2 = rng.uniform(1, 10, n), rng.uniform(1, 10, n)
    u = np.stack([np.cos(t), np.sin(t)], axis=-1)
    v = np.stack([-np.sin(t), np.cos(t)], axis=-1)
    points = np.stack([origin, origin + r1[:, None] * u, origin + r2[:, None] * v], axis=1)
    triplets = all_triplets(3)
    std = angle_circular_std(points, triplets)
    constant = triplets.tolist().index([1, 0, 2])
    assert std[constant] == pytest.approx(0.0, abs=1e-6)
    assert np.delete(std, constant).min() > 0.05
    selection = select_morphology(points, np.full((n, 2), 100.0), n_pairs=1, n_triplets=1)
    assert selection.triplets.tolist() == [[1, 0, 2]]


def test_triplet_count_for_aasce_and_chunking():
    assert len(all_triplets(68)) == 68 * 67 * 66 // 2
    points, _ = varying_labels(k=6)
    triplets = all_triplets(6)
    np.testing.assert_allclose(angle_circular_std(points, triplets, chunk=7), angle_circular_std(points, triplets))


def test_normalisation_is_per_axis():
    points = np.array([[[50.0, 100.0]]])
    np.testing.assert_allclose(normalise_points(points, [[200.0, 100.0]]), [[[0.5, 0.5]]])


def test_thresholds_replace_counts():
    points, sizes = varying_labels()
    selection = select_morphology(points, sizes, distance_threshold=1e-9, angle_threshold=-1.0)
    assert selection.pairs.tolist() == [[0, 1]]
    assert len(selection.triplets) == 0


def test_adjacent_variant_needs_vertebra_layout():
    rng = np.random.default_rng(2)
    selection = select_morphology(rng.uniform(0, 1, (5, 8, 2)), np.ones((5, 2)), variant="adjacent")
    assert len(selection.pairs) == 8 and len(selection.triplets) == 8
    assert [0, 1] in selection.pairs.tolist() and [2, 0, 1] in selection.triplets.tolist()  # TL angle: BL-TL-TR
    with pytest.raises(ValueError, match="4 corners per vertebra"):
        select_morphology(rng.uniform(0, 1, (5, 19, 2)), np.ones((5, 2)), variant="adjacent")


def test_save_load_round_trip(tmp_path):
    points, sizes = varying_labels()
    selection = select_morphology(points, sizes, n_pairs=4, n_triplets=5)
    selection.save(tmp_path / "morphology.json")
    loaded = MorphologySelection.load(tmp_path / "morphology.json")
    np.testing.assert_array_equal(loaded.pairs, selection.pairs)
    np.testing.assert_array_equal(loaded.triplets, selection.triplets)
    assert loaded.variant == "low" and loaded.num_keypoints == 5
    with pytest.raises(ValueError, match="outside"):
        MorphologySelection([[0, 7]], [], num_keypoints=5)


def test_loss_zero_on_truth_positive_otherwise_with_gradients():
    points, sizes = varying_labels(n=4)
    selection = select_morphology(points, sizes, n_pairs=5, n_triplets=5)
    true = torch.tensor(normalise_points(points, sizes), dtype=torch.float32)
    loss_d, loss_a = morphology_loss(true.clone(), true, selection)
    assert loss_d.item() == pytest.approx(0.0, abs=1e-6)
    assert loss_a.item() == pytest.approx(0.0, abs=1e-6)
    pred = (true + 0.05 * torch.randn_like(true, generator=torch.Generator().manual_seed(0))).requires_grad_()
    loss_d, loss_a = morphology_loss(pred, true, selection)
    assert loss_d.item() > 0 and loss_a.item() > 0
    (loss_d + loss_a).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_loss_angle_term_by_hand_and_coincident_points():
    selection = MorphologySelection(pairs=[[0, 1]], triplets=[[1, 0, 2]], num_keypoints=3)
    true = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])  # 90 degrees, distance 1
    pred = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]]])  # 45 degrees, distance 2
    loss_d, loss_a = morphology_loss(pred, true, selection)
    assert loss_d.item() == pytest.approx(1.0, abs=1e-6)
    assert loss_a.item() == pytest.approx(1 - np.cos(np.pi / 4), abs=1e-6)
    collapsed = torch.zeros(1, 3, 2, requires_grad=True)
    sum(morphology_loss(collapsed, true, selection)).backward()
    assert torch.isfinite(collapsed.grad).all()


def test_off_variant_gives_zero_loss():
    points, sizes = varying_labels(n=3)
    selection = select_morphology(points, sizes, variant="off")
    assert selection.empty
    pred = torch.rand(2, 5, 2, requires_grad=True)
    loss_d, loss_a = morphology_loss(pred, torch.rand(2, 5, 2), selection)
    assert loss_d.item() == 0 and loss_a.item() == 0
    (loss_d + loss_a).backward()  # still part of the graph
