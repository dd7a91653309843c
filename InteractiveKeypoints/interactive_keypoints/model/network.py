"""The paper's interactive keypoint network: HRNet + OCR with hint fusion and gating.

    image ----------------> stem1 (H/2, 64) --(+)--> stem2 -> layer1 (F_h) -> stages -> F_c (H/4)
    [prev, clicks] (2K) -> hint fusion -------'                     |                    |
    clicks (K) ------------------------------------> gating( F_h ++ clicks ) -> A --> A * F_c
                                                                            OCR head -> logits, aux

Only ``stem1`` depends on the image alone: ``encode_image`` runs it once per image and
``forward_cached`` runs the rest for each click.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .hrnet import BN_MOMENTUM, HRNetBackbone
from .ocr import OCRHead


class HintFusion(nn.Module):
    """RITM-style: previous prediction + click heatmaps -> features added after stem1."""

    def __init__(self, num_keypoints, hint_channels=16, out_channels=64, init_scale=0.05):
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(2 * num_keypoints, hint_channels, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(hint_channels, out_channels, 3, stride=2, padding=1),
        )
        self.scale = nn.Parameter(torch.tensor(init_scale))

    def forward(self, prev, clicks, channels=None):
        """prev, clicks: (B, K, H, W), or (B, n, H, W) holding only keypoint ``channels``.

        The sparse form gives the same result: channels that are all zero add nothing to
        the first 1x1 conv, so only the weights of the given channels are used.
        """
        first, rest = self.encode[0], self.encode[1:]
        if channels is None:
            x = first(torch.cat([prev, clicks], dim=1))
        elif len(channels) == 0:  # no hints: the 1x1 conv gives its bias everywhere
            b, _, h, w = clicks.shape
            x = first.bias.view(1, -1, 1, 1).expand(b, -1, h, w).to(clicks.dtype).clone()
        else:
            k = first.in_channels // 2
            weight = first.weight[:, torch.cat([channels, channels + k])]
            x = F.conv2d(torch.cat([prev, clicks], dim=1), weight, first.bias)
        return rest(x) * self.scale.abs()


class InteractionGate(nn.Module):
    """Channel gates for F_c from the click heatmaps and layer1 features, pooled globally."""

    def __init__(self, feature_channels, num_keypoints, out_channels, pool="max", hidden=256, squeeze=16):
        super().__init__()
        blocks, ch = [], feature_channels + num_keypoints
        for stride in (2, 1, 1):
            blocks += [
                nn.Conv2d(ch, hidden, 3, stride, padding=1, bias=False),
                nn.BatchNorm2d(hidden, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            ch = hidden
        self.convs = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.excite = nn.Sequential(
            nn.Conv2d(hidden, squeeze, 1), nn.ReLU(inplace=True), nn.Conv2d(squeeze, out_channels, 1), nn.Sigmoid()
        )

    def forward(self, features, clicks, channels=None):
        if clicks.shape[1]:  # (none in the sparse form of a pass without clicks)
            clicks = F.interpolate(clicks, size=features.shape[-2:], mode="bilinear", align_corners=False)
        if channels is None:
            x = self.convs(torch.cat([features, clicks], dim=1))
        else:
            x = self.convs[1:](self._first_conv_sparse(features, clicks, channels))
        return self.excite(self.pool(x))

    def _first_conv_sparse(self, features, clicks, channels):
        """The first conv of [features, all K click maps] from the given ``channels`` only.

        A conv is linear in its input channels (zero padding), so the K - n all-zero click
        maps add nothing: the features' part of the weights plus the given channels' part
        give the dense result without building or convolving the zeros (each click).
        """
        first, c = self.convs[0], features.shape[1]
        out = F.conv2d(features, first.weight[:, :c], first.bias, first.stride, first.padding)
        if len(channels):
            out = out + F.conv2d(clicks, first.weight[:, c + channels], None, first.stride, first.padding)
        return out


class InteractiveKeypointNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        k = config.num_keypoints
        self.backbone = HRNetBackbone(
            width=config.width,
            in_channels=config.in_channels,
            stage_modules=config.stage_modules,
            stage_blocks=config.stage_blocks,
            stem_blocks=config.stem_blocks,
        )
        self.hint_fusion = HintFusion(k, config.hint_channels, out_channels=64)
        self.gate = (
            InteractionGate(
                self.backbone.layer1_channels,
                k,
                self.backbone.out_channels,
                pool=config.gating_pool,
                hidden=config.gate_channels,
            )
            if config.gating
            else None
        )
        self.head = OCRHead(self.backbone.out_channels, k, config.ocr_mid_channels, config.ocr_key_channels)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """The click-independent part: the first stem conv (H/2, 64 channels)."""
        return self.backbone.stem1(image)

    def forward_cached(self, image_features, clicks, prev, output_size=None, channels=None):
        """Everything after ``encode_image``. ``channels``: see HintFusion.forward.

        With ``output_size`` the logits are upsampled to it (training, full decoding);
        without, they stay at H/4 (the fast inference path decodes them locally).
        """
        x = image_features + self.hint_fusion(prev, clicks, channels)
        layer1, combined = self.backbone.forward_from_stem(x)
        if self.gate is not None:
            combined = combined * self.gate(layer1, clicks, channels)
        logits, aux_logits = self.head(combined)
        if output_size is None:
            return {"logits": logits, "aux_logits": aux_logits}
        upsample = lambda t: F.interpolate(t, size=output_size, mode="bilinear", align_corners=False)
        return {"logits": upsample(logits), "aux_logits": upsample(aux_logits)}

    def forward(self, image, clicks, prev):
        """image (B, C, H, W); clicks, prev (B, K, H, W) -> logits at the input resolution."""
        return self.forward_cached(self.encode_image(image), clicks, prev, image.shape[-2:])
