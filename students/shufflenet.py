"""ShuffleNetV1 (Zhang et al. 2018) and ShuffleNetV2 (Ma et al. 2018) as RepDistiller and mdistiller define
them for CIFAR (their ShuffleV1 and ShuffleV2).

Both start with a 1x1 conv to 24 channels + BN-ReLU at full resolution (no stride, no max-pool), then three
stages whose first unit halves the resolution (32 -> 16 -> 8 -> 4), global average pooling and a linear head.
Features: the stem (32x32) and the three stage outputs (16, 8, 4), like RepDistiller's.

As in their code, both keep PyTorch's default initialisation, and V1 has a ReLU after its depthwise conv.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.students.registry import STUDENTS
from distill.students.layers import StagedNet, channel_shuffle, conv_bn, conv_bn_relu, make_stage

STEM_CHANNELS = 24


class ShuffleUnitV1(nn.Module):
    """Grouped 1x1 (bottleneck: out/4 channels) + BN-ReLU, shuffle, 3x3 depthwise (stride) + BN-ReLU, grouped
    1x1 + BN; added to the input, or with stride 2 concatenated with its 3x3 average pool; then ReLU.
    The first 1x1 on the 24-channel stem is not grouped (too few channels to split)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        branch_ch = out_ch - in_ch if stride == 2 else out_ch  # the concatenated shortcut brings in_ch
        mid = branch_ch // 4
        self.first_groups = 1 if in_ch == STEM_CHANNELS else groups
        self.reduce = conv_bn_relu(in_ch, mid, 1, groups=self.first_groups)
        self.depthwise = conv_bn_relu(mid, mid, 3, stride, groups=mid)
        self.expand = conv_bn(mid, branch_ch, 1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.first_groups)))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleUnitV2(nn.Module):
    """Stride 1: half the channels pass through, the other half go through 1x1 + BN-ReLU, 3x3 depthwise + BN,
    1x1 + BN-ReLU. Stride 2 (downsampling): both branches see all channels (left: 3x3 depthwise stride 2 + BN,
    1x1 + BN-ReLU; right: the stride-1 branch with a stride-2 depthwise), doubling the width. Then
    concatenate and shuffle the two halves."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride = stride
        half = out_ch // 2
        branch_in = in_ch if stride == 2 else in_ch // 2
        self.left = (nn.Sequential(*conv_bn(in_ch, in_ch, 3, stride, groups=in_ch), *conv_bn_relu(in_ch, half, 1))
                     if stride == 2 else None)
        self.right = nn.Sequential(
            *conv_bn_relu(branch_in, half, 1),
            *conv_bn(half, half, 3, stride, groups=half),
            *conv_bn_relu(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.left is None:
            kept, x = x.chunk(2, dim=1)
        else:
            kept = self.left(x)
        return channel_shuffle(torch.cat([kept, self.right(x)], 1), 2)


class ShuffleNetV1(StagedNet):
    def __init__(self, widths=(240, 480, 960), blocks=(4, 8, 4), groups: int = 3, num_classes: int = 10):
        stages, in_ch = [], STEM_CHANNELS
        for out_ch, n in zip(widths, blocks):
            stages.append(make_stage(partial(ShuffleUnitV1, groups=groups), in_ch, out_ch, n, stride=2))
            in_ch = out_ch
        super().__init__(conv_bn_relu(3, STEM_CHANNELS, 1), stages, nn.Linear(widths[-1], num_classes))


class ShuffleNetV2(StagedNet):
    """Stage k: one downsampling unit, then `blocks[k]` stride-1 units (RepDistiller's count: 1 + 3, 1 + 7,
    1 + 3 units); a 1x1 conv to 1024 channels + BN-ReLU before the pooling."""

    def __init__(self, widths=(116, 232, 464), blocks=(3, 7, 3), last_ch: int = 1024, num_classes: int = 10):
        stages, in_ch = [], STEM_CHANNELS
        for out_ch, n in zip(widths, blocks):
            stages.append(make_stage(ShuffleUnitV2, in_ch, out_ch, 1 + n, stride=2))
            in_ch = out_ch
        super().__init__(conv_bn_relu(3, STEM_CHANNELS, 1), stages, nn.Linear(last_ch, num_classes),
                         neck=conv_bn_relu(widths[-1], last_ch, 1))


@STUDENTS.register()
def shufflenetv1(num_classes: int = 10) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes=num_classes)


@STUDENTS.register()
def shufflenetv2(num_classes: int = 10) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes=num_classes)
