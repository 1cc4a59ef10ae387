"""VGG with BatchNorm as RepDistiller and mdistiller define it for CIFAR (their vgg8_bn and vgg13_bn).

Five blocks of 3x3 conv-BN-ReLU layers (64, 128, 256, 512, 512 channels), a 2x2 max-pool after each of the
first three (32 -> 16 -> 8 -> 4: the fourth pool, which RepDistiller applies only to 64x64 inputs, is left
out, so blocks 3 and 4 both run at 4x4), global average pooling and one linear layer: no fully connected
stack. VGG-8 has one conv per block (5 convs + the head, RepDistiller's name), VGG-13 two.

The convs keep their bias, redundant before BatchNorm, because it is in the anchors' parameter counts.
Features: block 0's output is the stem (32x32), blocks 1-4 the stages (16, 8, 4, 4), like RepDistiller's.
"""

from __future__ import annotations

from torch import nn

from distill.students.registry import STUDENTS
from distill.students.layers import StagedNet, conv_bn_relu, init_weights

WIDTHS = (64, 128, 256, 512, 512)
POOLED_BEFORE = (False, True, True, True, False)  # a max-pool opens blocks 1-3


def vgg_block(in_ch: int, out_ch: int, convs: int, pool_first: bool) -> nn.Sequential:
    layers = [nn.MaxPool2d(2)] if pool_first else []
    for k in range(convs):
        layers += conv_bn_relu(in_ch if k == 0 else out_ch, out_ch, 3, bias=True)
    return nn.Sequential(*layers)


class CifarVGG(StagedNet):
    def __init__(self, convs_per_block: int, num_classes: int = 10):
        ins = (3, *WIDTHS[:-1])
        stem, *stages = (vgg_block(i, o, convs_per_block, pool) for i, o, pool in zip(ins, WIDTHS, POOLED_BEFORE))
        super().__init__(stem, stages, nn.Linear(WIDTHS[-1], num_classes))
        init_weights(self)
        nn.init.normal_(self.fc.weight, std=0.01)  # as RepDistiller
        nn.init.zeros_(self.fc.bias)


@STUDENTS.register()
def vgg8(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(1, num_classes)


@STUDENTS.register()
def vgg13(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(2, num_classes)
