"""MobileNetV2 (Sandler et al. 2018) as RepDistiller and mdistiller define it for CIFAR: their `mobile_half`,
the "MobileNetV2" student of their tables (ResNet50 -> MobileNetV2, VGG13 -> MobileNetV2).

Width multiplier 0.5 and expansion 6, with ImageNet's strides kept: a stride-2 3x3 stem (16 channels), seven
groups of inverted residuals (t, c, n, s below; channels halved), a 1x1 conv to 1280 channels (not scaled
below width 1), global average pooling and a linear head; 32 -> 16 -> 16 -> 8 -> 4 -> 2. As in their code,
activations are ReLU (not ReLU6) and every block has its 1x1 expansion conv, also where t = 1.

Features, as RepDistiller's: the stem (16x16), then the outputs of groups 1, 2, 4 and 6 (16, 8, 4, 2).
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from distill.students.registry import STUDENTS
from distill.students.layers import StagedNet, conv_bn, conv_bn_relu, init_weights, make_stage

# (expansion t, channels c at width 1, blocks n, first stride s) per group, Sandler et al.'s table 2.
GROUPS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STAGE_ENDS = (2, 3, 5, 7)  # the stages end after groups 1, 2, 4 and 6 (0-based), where RepDistiller reads features
LAST_CHANNELS = 1280


class InvertedResidual(nn.Module):
    """1x1 expand + BN-ReLU, 3x3 depthwise (stride) + BN-ReLU, 1x1 linear projection + BN; identity shortcut
    where the shape allows."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        mid = in_ch * expansion
        self.conv = nn.Sequential(
            *conv_bn_relu(in_ch, mid, 1),
            *conv_bn_relu(mid, mid, 3, stride, groups=mid),
            *conv_bn(mid, out_ch, 1),
        )
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


def make_blocks(in_ch: int, width: float) -> tuple[list[nn.Module], int]:
    blocks = []
    for t, c, n, s in GROUPS:
        out_ch = int(c * width)
        blocks.append(make_stage(partial(InvertedResidual, expansion=t), in_ch, out_ch, n, s))
        in_ch = out_ch
    return blocks, in_ch


class CifarMobileNetV2(StagedNet):
    def __init__(self, width: float = 0.5, num_classes: int = 10):
        stem_ch = int(32 * width)
        groups, last_ch = make_blocks(stem_ch, width)
        stages = [nn.Sequential(*groups[a:b]) for a, b in zip((0, *STAGE_ENDS), STAGE_ENDS)]
        head_ch = int(LAST_CHANNELS * width) if width > 1.0 else LAST_CHANNELS
        super().__init__(conv_bn_relu(3, stem_ch, 3, stride=2), stages, nn.Linear(head_ch, num_classes),
                         neck=conv_bn_relu(last_ch, head_ch, 1))
        init_weights(self)
        nn.init.normal_(self.fc.weight, std=0.01)  # as RepDistiller
        nn.init.zeros_(self.fc.bias)


@STUDENTS.register()
def mobilenetv2(num_classes: int = 10) -> CifarMobileNetV2:
    return CifarMobileNetV2(0.5, num_classes)
