"""What every student family shares: conv + BatchNorm, the weight init, and the stem -> stages -> head layout
whose `forward_features` feature-based distillation reads."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
            bias: bool = False) -> nn.Sequential:
    # No conv bias by default: the following BatchNorm's shift makes it redundant.
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch))


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_ch, out_ch, kernel, stride, groups, bias), nn.ReLU(inplace=True))


def make_stage(unit: Callable[[int, int, int], nn.Module], in_ch: int, out_ch: int, units: int,
               stride: int) -> nn.Sequential:
    """`units` blocks built as unit(in, out, stride): the first changes the width and applies the stride."""
    return nn.Sequential(unit(in_ch, out_ch, stride), *(unit(out_ch, out_ch, 1) for _ in range(units - 1)))


def init_weights(model: nn.Module) -> None:
    """He et al.'s normal init (fan_out) for convolutions, BatchNorm as identity; linear layers keep PyTorch's."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's shuffle: channel c of group g moves to position c * groups + g, so the next grouped conv
    sees every group. (N, g*k, H, W) -> (N, g, k, H, W) -> (N, k, g, H, W) -> (N, k*g, H, W)."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)
    # channels_last (GPU runs): shuffle the last dimension of the NHWC view, so the one copy keeps that layout
    nhwc = x.permute(0, 2, 3, 1)
    return nhwc.unflatten(3, (groups, -1)).transpose(3, 4).flatten(3, 4).permute(0, 3, 1, 2)


class StagedNet(nn.Module):
    """stem -> stages -> neck -> global average pooling -> linear head, the layout every student shares.

    `forward_features` returns the logits and [stem output, each stage's output, pooled feature]: feature
    methods take the stage outputs (features[1:-1]) and pair each with the teacher stage of the same spatial
    size (distill/methods/base.py). The neck (Identity by default) is what a family runs between its last
    stage and the pooling, e.g. a pre-activation net's final BN-ReLU. Global pooling adapts to any input size.
    """

    def __init__(self, stem: nn.Module, stages: Iterable[nn.Module], fc: nn.Linear, neck: nn.Module | None = None):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.neck = neck if neck is not None else nn.Identity()
        self.fc = fc

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        pooled = torch.flatten(F.adaptive_avg_pool2d(self.neck(feats[-1]), 1), 1)
        feats.append(pooled)
        return self.fc(pooled), feats

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]
