"""Wide ResNets (Zagoruyko & Komodakis 2016) as RepDistiller and mdistiller define them for CIFAR.

WRN-d-k: depth d = 6n + 4, width factor k. A 3x3 stem conv (16 channels, no BN after it), three stages of n
pre-activation blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the input; widths 16k, 32k, 64k; the first block
of stages 2 and 3 has stride 2), then BN-ReLU, global average pooling and a linear head. Where a block changes
shape its shortcut is a 1x1 conv (no BN) of the pre-activated input. No dropout (RepDistiller's dropRate 0).

Stage outputs are the residual streams before any BN-ReLU, as in RepDistiller's (non-preact) features.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.students.registry import STUDENTS
from distill.students.layers import StagedNet, init_weights, make_stage


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        same_shape = stride == 1 and in_ch == out_ch
        self.shortcut = None if same_shape else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(StagedNet):
    def __init__(self, depth: int, width: int, num_classes: int = 10):
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        stages = [make_stage(PreActBlock, i, o, n, stride) for i, o, stride in zip(widths, widths[1:], (1, 2, 2))]
        neck = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU())  # the last block's output is pre-activation
        super().__init__(conv3x3(3, widths[0]), stages, nn.Linear(widths[-1], num_classes), neck)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)  # as RepDistiller


def _register(depth: int, width: int) -> None:
    @STUDENTS.register(f"wrn_{depth}_{width}")
    def build(num_classes: int = 10) -> WideResNet:
        return WideResNet(depth, width, num_classes)


for _depth, _width in ((16, 2), (40, 1), (40, 2)):
    _register(_depth, _width)
