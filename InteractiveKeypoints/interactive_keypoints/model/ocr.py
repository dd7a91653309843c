"""Object-contextual representations head (Yuan et al., ECCV 2020) for K keypoint "objects".

The aux head's logits act as soft object regions; pixel features are pooled into one
representation per keypoint, and every pixel attends to those K representations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .hrnet import BN_MOMENTUM


def conv1x1_bn_relu(in_ch, out_ch):
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    )


def spatial_gather(features: torch.Tensor, region_logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), (B, K, H, W) -> (B, C, K, 1): features averaged by softmax(region) over H*W."""
    b, c = features.shape[:2]
    k = region_logits.shape[1]
    weights = F.softmax(region_logits.flatten(2), dim=2)  # B, K, HW
    pooled = torch.bmm(weights, features.flatten(2).transpose(1, 2))  # B, K, C
    return pooled.transpose(1, 2).reshape(b, c, k, 1)


class ObjectAttention(nn.Module):
    """Pixels (queries) attend to the K object representations (keys/values)."""

    def __init__(self, in_ch, key_ch):
        super().__init__()
        self.key_ch = key_ch
        self.f_pixel = nn.Sequential(conv1x1_bn_relu(in_ch, key_ch), conv1x1_bn_relu(key_ch, key_ch))
        self.f_object = nn.Sequential(conv1x1_bn_relu(in_ch, key_ch), conv1x1_bn_relu(key_ch, key_ch))
        self.f_down = conv1x1_bn_relu(in_ch, key_ch)
        self.f_up = conv1x1_bn_relu(key_ch, in_ch)

    def forward(self, pixels, objects):
        b, _, h, w = pixels.shape
        query = self.f_pixel(pixels).flatten(2).transpose(1, 2)  # B, HW, key
        key = self.f_object(objects).flatten(2)  # B, key, K
        value = self.f_down(objects).flatten(2).transpose(1, 2)  # B, K, key
        attention = F.softmax(torch.bmm(query, key) * self.key_ch**-0.5, dim=-1)  # B, HW, K
        context = torch.bmm(attention, value).transpose(1, 2).reshape(b, self.key_ch, h, w)
        return self.f_up(context)


class OCRHead(nn.Module):
    def __init__(self, in_ch, num_keypoints, mid_ch=256, key_ch=128, dropout=0.05):
        super().__init__()
        self.aux_head = nn.Sequential(conv1x1_bn_relu(in_ch, in_ch), nn.Conv2d(in_ch, num_keypoints, 1))
        self.reduce = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_ch, momentum=BN_MOMENTUM),
            nn.ReLU(inplace=True),
        )
        self.attention = ObjectAttention(mid_ch, key_ch)
        self.fuse = nn.Sequential(conv1x1_bn_relu(2 * mid_ch, mid_ch), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(mid_ch, num_keypoints, 1)

    def forward(self, features):
        aux_logits = self.aux_head(features)
        pixels = self.reduce(features)
        objects = spatial_gather(pixels, aux_logits)
        context = self.attention(pixels, objects)
        logits = self.classifier(self.fuse(torch.cat([context, pixels], dim=1)))
        return logits, aux_logits
