"""CIFAR ResNets (He et al. 2016, section 4.2) and RepDistiller's 4x-wide variants.

depth = 6n + 2: a 3x3 stem conv, three stages of n BasicBlocks (the first block of stages 2 and 3
has stride 2), global average pooling and a linear head.

Shortcuts where a block changes shape:
- "A" (He et al. for CIFAR): subsample and zero-pad the new channels; parameter-free.
- "B" (RepDistiller): 1x1 conv + BN projection.
The thin nets use "A" and the x4 nets "B" because those are the definitions behind the published
parameter counts: with "B" the thin nets gain 2,752 parameters, which lifts resnet32 to 0.467M and
resnet56 to 0.856M, off the published 0.46M and 0.85M. Pass shortcut="B" to CifarResNet to get
RepDistiller's thin nets.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from distill.students.registry import STUDENTS
from distill.students.layers import StagedNet, conv_bn, conv_bn_relu, init_weights, make_stage

Shortcut = Literal["A", "B"]
Widths = tuple[int, int, int, int]  # stem, stage 1, stage 2, stage 3
THIN: Widths = (16, 16, 32, 64)
WIDE_X4: Widths = (32, 64, 128, 256)  # RepDistiller's "x4": the stem only doubled, stages 4x


class ZeroPadShortcut(nn.Module):
    """Option A: identity on the old channels, zeros on the new ones."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_ch - in_ch

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # keeps channels_last and dtype


def make_shortcut(in_ch: int, out_ch: int, stride: int, kind: Shortcut) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if kind == "A" and out_ch >= in_ch:
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return conv_bn(in_ch, out_ch, 1, stride)


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, shortcut: Shortcut = "B"):
        super().__init__()
        self.conv1 = conv_bn(in_ch, out_ch, 3, stride)
        self.conv2 = conv_bn(out_ch, out_ch, 3)
        self.shortcut = make_shortcut(in_ch, out_ch, stride, shortcut)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + self.shortcut(x))


class CifarResNet(StagedNet):
    """forward_features: logits and [stem output, stage 1-3 outputs, pooled feature] (students/layers.py)."""

    def __init__(
        self,
        depth: int,
        widths: Widths = THIN,
        num_classes: int = 10,
        shortcut: Shortcut = "B",
        in_channels: int = 3,
    ):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        stem_width, *stage_widths = widths
        stem = conv_bn_relu(in_channels, stem_width, 3)
        ins = [stem_width, *stage_widths[:-1]]
        block = partial(BasicBlock, shortcut=shortcut)
        stages = [make_stage(block, i, o, n, stride=1 if k == 0 else 2)
                  for k, (i, o) in enumerate(zip(ins, stage_widths))]
        super().__init__(stem, stages, nn.Linear(stage_widths[-1], num_classes))
        init_weights(self)


def _register(name: str, depth: int, widths: Widths, shortcut: Shortcut) -> None:
    @STUDENTS.register(name)
    def build(num_classes: int = 10) -> CifarResNet:
        return CifarResNet(depth, widths, num_classes, shortcut)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, THIN, "A")
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _depth, WIDE_X4, "B")
