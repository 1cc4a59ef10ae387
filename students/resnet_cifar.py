"""CIFAR ResNets (He et al. 2016, section 4.2), RepDistiller's thin variants of them and its 4x-wide ones.

depth = 6n + 2: a 3x3 stem conv, three stages of n BasicBlocks (the first block of stages 2 and 3
has stride 2), global average pooling and a linear head.

Shortcuts where a block changes shape:
- "A" (He et al. for CIFAR): subsample and zero-pad the new channels; parameter-free.
- "B" (RepDistiller): 1x1 conv + BN projection.

The registered nets:
- resnet8, resnet14, resnet20, resnet32, resnet44, resnet56, resnet110: He et al.'s, with "A" shortcuts, the
  definition behind their published parameter counts (resnet20 0.27M, resnet56 0.85M at 10 classes);
- resnet8b ... resnet110b ("b" for the "B" shortcuts): the same depths as RepDistiller's models/resnet.py builds
  them, the networks of its resnet56 -> resnet20, resnet110 -> resnet20 and resnet110 -> resnet32 rows. The two
  projections (16 -> 32 and 32 -> 64 channels) add 2,752 parameters: resnet20b has 272,474 at 10 classes
  (resnet20 269,722), resnet56b 855,770 (resnet56 853,018), as RepDistiller's code counts them;
- resnet8x4, resnet32x4: RepDistiller's 4x-wide nets, "B" shortcuts (its only definition).
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
    _register(f"resnet{_depth}b", _depth, THIN, "B")
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _depth, WIDE_X4, "B")
