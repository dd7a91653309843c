"""Training losses: heatmap BCE on main and aux logits, plus the morphology-aware term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heatmaps import local_soft_argmax
from .morphology import MorphologySelection, morphology_loss


def heatmap_loss(
    outputs: dict, target: torch.Tensor, aux_weight: float = 1.0, channel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain BCE between sigmoid(logits) and the Gaussian target, main + aux (paper L_g).

    ``channel_weight`` (B, K): a weighted mean over keypoint channels instead of the plain
    mean (all ones gives the plain mean), e.g. less weight on clicked keypoints, whose
    heatmap the click already gives away.
    """

    def bce(logits):
        if channel_weight is None:
            return F.binary_cross_entropy_with_logits(logits.float(), target)
        per_channel = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean((2, 3))
        return (per_channel * channel_weight).sum() / channel_weight.sum()

    return bce(outputs["logits"]) + aux_weight * bce(outputs["aux_logits"])


def morphology_term(
    logits: torch.Tensor,
    true_points: torch.Tensor,
    visible: torch.Tensor,
    selection: MorphologySelection,
    distance_weight: float = 0.01,
    angle_weight: float = 0.01,
) -> torch.Tensor:
    """Morphology-aware loss on soft-argmax coordinates, in the augmented frame.

    Applied to every sample whose keypoints all stayed inside the augmented image (a
    point pushed out by rotation/zoom has no prediction to compare with).
    """
    if selection.empty:
        return logits.sum() * 0.0
    h, w = logits.shape[-2:]
    keep = visible.all(dim=1)
    if not keep.any():
        return logits.sum() * 0.0
    pred, _ = local_soft_argmax(torch.sigmoid(logits[keep].float()))
    norm = torch.tensor([w, h], dtype=pred.dtype, device=pred.device)
    loss_d, loss_a = morphology_loss(pred / norm, true_points[keep].float() / norm, selection)
    return distance_weight * loss_d + angle_weight * loss_a
