"""Heatmap coding: Gaussian encoding and local soft-argmax decoding."""

import torch
import torch.nn.functional as F

from interactive_keypoints.heatmaps import decode_heatmaps, decode_logits_locally, gaussian_heatmaps


def test_decoding_a_perfect_gaussian_recovers_subpixel_position():
    generator = torch.Generator().manual_seed(0)
    size = (256, 128)
    # anywhere the 15 x 15 window fits inside the map (at the border it is clamped)
    points = 8 + torch.rand(4, 30, 2, generator=generator) * torch.tensor([127.0 - 16, 255.0 - 16])
    decoded, confidence = decode_heatmaps(gaussian_heatmaps(points, size, sigma=7.5))
    assert (decoded - points).abs().max() < 0.05
    assert confidence.min() > 0.95


def test_gaussian_is_unnormalised_with_given_sigma():
    maps = gaussian_heatmaps(torch.tensor([[[10.0, 20.0]]]), (40, 30), sigma=3.0)
    assert maps[0, 0, 20, 10] == 1.0
    assert torch.isclose(maps[0, 0, 20, 13], torch.exp(torch.tensor(-0.5)))


def test_mask_zeroes_unclicked_channels():
    maps = gaussian_heatmaps(torch.zeros(1, 3, 2) + 5, (16, 16), 2.0, mask=torch.tensor([[True, False, True]]))
    assert maps[0, 1].abs().sum() == 0 and maps[0, 0].max() == 1 and maps[0, 2].max() == 1


def test_local_decoding_of_low_res_logits_equals_full_resolution_decoding():
    torch.manual_seed(0)
    h, w = 128, 64
    points = torch.rand(2, 30, 2) * torch.tensor([w - 1.0, h - 1.0])
    points[0, :3] = torch.tensor([[0.0, 0.0], [w - 1.0, h - 1.0], [2.0, 60.0]])  # borders too
    logits = gaussian_heatmaps(points, (h, w), 2.0) * 12 - 6 + 0.3 * torch.randn(2, 30, h, w)
    full = F.interpolate(logits, size=(512, 256), mode="bilinear", align_corners=False)
    expected_points, expected_confidence = decode_heatmaps(torch.sigmoid(full))
    points_local, confidence_local = decode_logits_locally(logits, (512, 256))
    assert (points_local - expected_points).abs().max() < 1e-3
    assert (confidence_local - expected_confidence).abs().max() < 1e-5


def test_low_confidence_for_flat_heatmap():
    flat = torch.full((1, 1, 64, 64), 0.1)
    _, confidence = decode_heatmaps(flat)
    assert confidence.item() < 0.2
