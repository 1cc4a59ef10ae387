"""Every student and teacher arch computes what it computed when tests/models/forward_golden.json was written
(fixed seed, fixed input, eval mode), and the CIFAR ResNets compute what He et al. describe, checked
against a functional re-implementation (a BasicBlock without its ReLU after the residual add fails both).

Rewrite the golden file only after a deliberate architecture change: python tests/models/test_forward.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill.models import build_model, forward_with_features, make_spec
from distill.front.names import STUDENT_ARCHS, TEACHER_ARCHS

GOLDEN = Path(__file__).with_name("forward_golden.json")
SIZE = 32
# The students of RepDistiller's tables are recorded in training mode too: there BatchNorm's batch statistics
# set every layer's scale, while in eval mode at init their anchors' fan-out init can shrink it to nothing
# (mobilenetv2's eval-mode logits are ~1e-9: its depthwise kernels start 1/sqrt(channels) below He's scale).
TRAIN_MODE_ARCHS = ("wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg13", "mobilenetv2", "shufflenetv1",
                    "shufflenetv2")


def logits_of(arch: str, train: bool = False) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(make_spec(arch, 10, SIZE)).train(train)
    torch.manual_seed(1)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        return model(x)


def train_key(arch: str) -> str:
    return f"{arch} (train mode)"


@pytest.mark.parametrize("arch", STUDENT_ARCHS + TEACHER_ARCHS)
def test_fixed_seed_forward_output_is_unchanged(arch):
    expected = torch.tensor(json.loads(GOLDEN.read_text())[arch])
    torch.testing.assert_close(logits_of(arch), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("arch", TRAIN_MODE_ARCHS)
def test_fixed_seed_training_mode_output_is_unchanged(arch):
    expected = torch.tensor(json.loads(GOLDEN.read_text())[train_key(arch)])
    assert expected.abs().max() > 0.1  # informative: a changed network could not match it by being ~0
    torch.testing.assert_close(logits_of(arch, train=True), expected, rtol=1e-3, atol=1e-4)


def conv_bn(x, seq, stride=1, relu=True):
    conv, bn = seq[0], seq[1]
    x = F.conv2d(x, conv.weight, stride=stride, padding=conv.padding)
    x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return F.relu(x) if relu else x


def block_reference(x, block):
    """He et al. 2016: out = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""
    stride = block.conv1[0].stride[0]
    out = conv_bn(conv_bn(x, block.conv1, stride), block.conv2, relu=False)
    if isinstance(block.shortcut, torch.nn.Identity):
        short = x
    elif isinstance(block.shortcut, torch.nn.Sequential):  # option B: 1x1 conv + BN
        short = conv_bn(x, block.shortcut, stride, relu=False)
    else:  # option A: subsample, zero-pad the new channels
        short = F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, 0, out.shape[1] - x.shape[1]))
    return F.relu(out + short)


@pytest.mark.parametrize("arch", ["resnet8", "resnet20", "resnet8x4"])
def test_cifar_resnets_compute_he_et_al_s_network(arch):
    torch.manual_seed(0)
    model = build_model(make_spec(arch, 10, SIZE)).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so every layer matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, SIZE, SIZE)
    h = conv_bn(x, model.stem)
    for stage in model.stages:
        for block in stage:
            h = block_reference(h, block)
    expected = F.linear(h.mean((2, 3)), model.fc.weight, model.fc.bias)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
        logits, feats = forward_with_features(model, x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert [f.shape[-1] for f in feats[1:-1]] == [32, 16, 8]  # stage outputs, then the pooled feature


def test_teacher_features_are_the_layers_of_its_forward():
    torch.manual_seed(0)
    model = build_model(make_spec("resnet18", 10, SIZE)).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        logits, feats = forward_with_features(model, x)
        torch.testing.assert_close(logits, model(x))
    assert [tuple(f.shape[1:]) for f in feats[1:-1]] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    golden = {arch: logits_of(arch).tolist() for arch in STUDENT_ARCHS + TEACHER_ARCHS}
    golden |= {train_key(arch): logits_of(arch, train=True).tolist() for arch in TRAIN_MODE_ARCHS}
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
