"""Pieces of the training loop: schedule, EMA, batch order, evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.augment import Preprocess
from distill.run import lr_factor
from distill.train import ModelEMA, epoch_permutation, evaluate


def test_lr_warms_up_linearly_then_decays_by_cosine_to_zero():
    total, warmup = 100, 10
    assert [lr_factor(s, total, warmup) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_factor(warmup, total, warmup) == pytest.approx(1.0)
    assert lr_factor(55, total, warmup) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(total, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0, total, 0) == pytest.approx(1.0)  # no warm-up: start at the peak


def test_ema_follows_weights_with_warmup_and_copies_batchnorm_statistics():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)  # first update: decay min(0.9, 2/11)
    expected = start + (1 - 2 / 11) * 1.0
    assert torch.allclose(ema.module[0].weight, expected)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_batch_order_depends_on_seed_and_epoch_only():
    cpu = torch.device("cpu")
    a = epoch_permutation(100, seed=1, epoch=3, device=cpu)
    assert torch.equal(a, epoch_permutation(100, seed=1, epoch=3, device=cpu))
    assert not torch.equal(a, epoch_permutation(100, seed=1, epoch=4, device=cpu))
    assert not torch.equal(a, epoch_permutation(100, seed=2, epoch=3, device=cpu))
    assert sorted(a.tolist()) == list(range(100))


class MirrorSensitive(nn.Module):
    """Predicts class 0 when the left half is brighter, else class 1: flips change its answer."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        left, right = x[..., : x.shape[-1] // 2].mean((1, 2, 3)), x[..., x.shape[-1] // 2:].mean((1, 2, 3))
        return torch.stack([left - right, right - left], 1) * self.scale


def test_evaluate_accuracy_per_class_and_flip_tta():
    x = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    x[:2, ..., :2] = 200  # left-bright images: class 0
    x[2:, ..., 2:] = 200
    y = torch.tensor([0, 0, 1, 0])  # the last label is wrong on purpose
    model, pre = MirrorSensitive(), Preprocess([0.0] * 3, [1.0] * 3)
    result = evaluate(model, pre, x, y, num_classes=2, batch_size=3)
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["per_class"] == pytest.approx([2 / 3, 1.0])
    # With flip TTA each image and its mirror vote with equal weight: a tie, broken towards class 0.
    tta = evaluate(model, pre, x, y, num_classes=2, tta=True)
    assert tta["per_class"] == pytest.approx([1.0, 0.0]) and tta["accuracy"] == pytest.approx(0.75)
