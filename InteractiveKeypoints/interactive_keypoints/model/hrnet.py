"""HRNetV2 backbone (Wang et al., TPAMI 2020), written as a plain nn.Module tree.

Stem (two stride-2 3x3 convs) -> layer1 (bottlenecks, 256 ch) -> stages 2..4 with
1, 2, 3 extra lower-resolution branches. The output is every branch bilinearly
upsampled to H/4 and concatenated (width * 15 channels: 480 for W32).

The stem is split so that the interactive model can add its hint features after the
first conv (``stem1``) and before the second (``stem2``).
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1


def conv_bn(in_ch, out_ch, kernel=3, stride=1, relu=True):
    layers = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch, momentum=BN_MOMENTUM),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch, planes, stride=1):
        super().__init__()
        out_ch = planes * self.expansion
        self.body = nn.Sequential(conv_bn(in_ch, planes, 3, stride), conv_bn(planes, out_ch, 3, relu=False))
        self.shortcut = (
            conv_bn(in_ch, out_ch, 1, stride, relu=False) if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x):
        out = self.body(x)
        out += self.shortcut(x)  # in place: the sum is only needed by the ReLU
        return out.relu_()


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch, planes, stride=1):
        super().__init__()
        out_ch = planes * self.expansion
        self.body = nn.Sequential(
            conv_bn(in_ch, planes, 1),
            conv_bn(planes, planes, 3, stride),
            conv_bn(planes, out_ch, 1, relu=False),
        )
        self.shortcut = (
            conv_bn(in_ch, out_ch, 1, stride, relu=False) if stride != 1 or in_ch != out_ch else nn.Identity()
        )

    def forward(self, x):
        out = self.body(x)
        out += self.shortcut(x)
        return out.relu_()


def stack_blocks(block, in_ch, planes, num_blocks):
    layers, ch = [], in_ch
    for _ in range(num_blocks):
        layers.append(block(ch, planes))
        ch = planes * block.expansion
    return nn.Sequential(*layers)


class FuseLayer(nn.Module):
    """Exchange between branches: output i = sum over inputs j resized to branch i."""

    def __init__(self, channels: list[int], out_branches: int):
        super().__init__()
        self.paths = nn.ModuleList()
        for i in range(out_branches):
            row = nn.ModuleList()
            for j, ch_j in enumerate(channels):
                if j > i:  # lower resolution: 1x1 conv, upsampled in forward
                    row.append(conv_bn(ch_j, channels[i], 1, relu=False))
                elif j == i:
                    row.append(nn.Identity())
                else:  # higher resolution: (i - j) stride-2 3x3 convs
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        steps.append(conv_bn(ch_j, channels[i] if last else ch_j, 3, 2, relu=not last))
                    row.append(nn.Sequential(*steps))
            self.paths.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for i, row in enumerate(self.paths):
            size = xs[i].shape[-2:]
            total: torch.Tensor | None = None
            for j, path in enumerate(typing.cast(nn.ModuleList, row)):  # a ModuleList of ModuleLists
                y = path(xs[j])
                if j > i:
                    y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
                # the first term is copied (xs[i] is read again by other rows), the rest added in place
                total = y.clone() if total is None and j == i else (y if total is None else total.add_(y))
            assert total is not None  # every row has a path from every branch
            outs.append(total.relu_())
        return outs


class HighResolutionModule(nn.Module):
    def __init__(self, channels: list[int], num_blocks: int):
        super().__init__()
        self.branches = nn.ModuleList(stack_blocks(BasicBlock, ch, ch, num_blocks) for ch in channels)
        self.fuse = FuseLayer(channels, len(channels))

    def forward(self, xs):
        return self.fuse([branch(x) for branch, x in zip(self.branches, xs)])


class Transition(nn.Module):
    """Adapts branch widths and adds one new branch at half the lowest resolution."""

    def __init__(self, in_channels: list[int], out_channels: list[int]):
        super().__init__()
        self.paths = nn.ModuleList()
        for i, out_ch in enumerate(out_channels):
            if i < len(in_channels):
                in_ch = in_channels[i]
                self.paths.append(nn.Identity() if in_ch == out_ch else conv_bn(in_ch, out_ch, 3))
            else:
                self.paths.append(conv_bn(in_channels[-1], out_ch, 3, 2))

    def forward(self, xs):
        return [path(xs[min(i, len(xs) - 1)]) for i, path in enumerate(self.paths)]


class HRNetBackbone(nn.Module):
    def __init__(self, width=32, in_channels=3, stage_modules=(1, 4, 3), stage_blocks=4, stem_blocks=4):
        super().__init__()
        self.stem1 = conv_bn(in_channels, 64, 3, 2)  # H/2; hint features are added after this
        self.stem2 = conv_bn(64, 64, 3, 2)  # H/4
        self.layer1 = stack_blocks(Bottleneck, 64, 64, stem_blocks)  # 256 ch
        self.layer1_channels = 64 * Bottleneck.expansion

        channels = [self.layer1_channels]
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for stage, num_modules in enumerate(stage_modules, start=2):
            new_channels = [width * 2**b for b in range(stage)]
            self.transitions.append(Transition(channels, new_channels))
            self.stages.append(
                nn.Sequential(*(HighResolutionModule(new_channels, stage_blocks) for _ in range(num_modules)))
            )
            channels = new_channels
        self.out_channels = sum(channels)

    def forward_from_stem(self, x_half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the H/2 stem features to (layer1 output, concatenated H/4 features)."""
        x = self.layer1(self.stem2(x_half))
        features = x
        xs = [x]
        for transition, stage in zip(self.transitions, self.stages):
            xs = stage(transition(xs))
        size = xs[0].shape[-2:]
        upsampled = [xs[0]] + [F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in xs[1:]]
        return features, torch.cat(upsampled, dim=1)

    def forward(self, image):
        return self.forward_from_stem(self.stem1(image))[1]
