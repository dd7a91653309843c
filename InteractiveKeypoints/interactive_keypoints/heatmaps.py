"""Keypoint <-> heatmap coding.

Encoding: an unnormalised Gaussian exp(-d^2 / 2 sigma^2) per keypoint (sigma in input pixels).
Decoding: hard argmax, then a soft-argmax in a 15 x 15 window around it (Bulat et al.),
which removes the quantisation of the grid. Points are (x, y) in input pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW = 15
SOFTMAX_GAIN = 10.0  # sharpens the window softmax; the reference uses the same value


def gaussian_heatmaps(points, size, sigma, mask=None):
    """points (B, K, 2) -> (B, K, H, W) heatmaps; channels where mask is False are zero."""
    h, w = size
    points = torch.as_tensor(points, dtype=torch.float32)
    ys = torch.arange(h, dtype=points.dtype, device=points.device).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=points.dtype, device=points.device).view(1, 1, 1, w)
    dx2 = (xs - points[..., 0, None, None]) ** 2
    dy2 = (ys - points[..., 1, None, None]) ** 2
    maps = torch.exp(-(dx2 + dy2) / (2 * sigma**2))
    if mask is not None:
        maps = maps * torch.as_tensor(mask, device=points.device).to(maps.dtype)[..., None, None]
    return maps


def _window_offsets(device, dtype):
    r = torch.arange(WINDOW, device=device, dtype=dtype) - WINDOW // 2
    return r.view(WINDOW, 1).expand(WINDOW, WINDOW), r.view(1, WINDOW).expand(WINDOW, WINDOW)


def local_soft_argmax(probs: torch.Tensor):
    """(B, K, H, W) probabilities -> points (B, K, 2), peak value (B, K). Differentiable
    in the window values (the argmax location itself is not)."""
    b, k, h, w = probs.shape
    flat = probs.reshape(b * k, h * w)
    peak, index = flat.max(dim=1)
    row, col = index // w, index % w
    # window centres are clamped so the window always lies inside the map
    half = WINDOW // 2
    row0 = row.clamp(half, h - 1 - half) if h >= WINDOW else torch.full_like(row, h // 2)
    col0 = col.clamp(half, w - 1 - half) if w >= WINDOW else torch.full_like(col, w // 2)
    dy, dx = _window_offsets(probs.device, torch.long)
    rows = (row0.view(-1, 1, 1) + dy).clamp(0, h - 1)
    cols = (col0.view(-1, 1, 1) + dx).clamp(0, w - 1)
    values = flat.gather(1, (rows * w + cols).reshape(b * k, -1))
    weights = F.softmax(values * SOFTMAX_GAIN, dim=1)
    x = (weights * cols.reshape(b * k, -1).to(weights.dtype)).sum(1)
    y = (weights * rows.reshape(b * k, -1).to(weights.dtype)).sum(1)
    return torch.stack([x, y], dim=1).view(b, k, 2), peak.view(b, k)


def decode_heatmaps(probs: torch.Tensor):
    """(B, K, H, W) probabilities -> points (B, K, 2) in input pixels, confidence (B, K).

    Confidence is the heatmap peak height: a trained model puts ~1 at a landmark it is
    sure of and a low, flat response where it is not.
    """
    points, peak = local_soft_argmax(probs.float())
    return points, peak.clamp(0.0, 1.0)


SEARCH_RADIUS = 22  # full-res pixels around the coarse peak; the fine peak is within ~6


def decode_logits_locally(logits: torch.Tensor, output_size):
    """Same result as ``decode_heatmaps(sigmoid(upsample(logits, output_size)))`` without
    upsampling whole maps: low-res logits (B, K, h, w) are bilinearly sampled
    (align_corners=False, as F.interpolate) only in a patch around each coarse peak.
    """
    b, k, h, w = logits.shape
    out_h, out_w = output_size
    side = 2 * SEARCH_RADIUS + 1
    if out_h < side or out_w < side:
        return decode_heatmaps(
            torch.sigmoid(F.interpolate(logits.float(), size=output_size, mode="bilinear", align_corners=False))
        )
    flat = logits.float().reshape(b * k, h * w)
    index = flat.argmax(dim=1)
    # coarse peak centre in output pixels; the patch is kept inside the image
    centre_x = ((index % w).float() + 0.5) * (out_w / w) - 0.5
    centre_y = ((index // w).float() + 0.5) * (out_h / h) - 0.5
    x0 = (centre_x.round().long() - SEARCH_RADIUS).clamp(0, out_w - side)
    y0 = (centre_y.round().long() - SEARCH_RADIUS).clamp(0, out_h - side)
    offsets = torch.arange(side, device=logits.device)
    xs = x0[:, None] + offsets  # (BK, side) output pixel columns
    ys = y0[:, None] + offsets
    # output pixel X samples the input at normalised 2 (X + 0.5) / W - 1 (align_corners=False)
    gx = (2 * (xs.float() + 0.5) / out_w - 1)[:, None, :].expand(-1, side, -1)
    gy = (2 * (ys.float() + 0.5) / out_h - 1)[:, :, None].expand(-1, -1, side)
    grid = torch.stack([gx, gy], dim=-1)  # (BK, side, side, 2)
    patch = F.grid_sample(
        logits.float().reshape(b * k, 1, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    points, peak = local_soft_argmax(torch.sigmoid(patch).view(1, b * k, side, side))
    points = points.view(b * k, 2) + torch.stack([x0, y0], dim=1).float()
    return points.view(b, k, 2), peak.view(b, k).clamp(0.0, 1.0)
