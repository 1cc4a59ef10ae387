"""Pieces of the training loop: schedule, EMA, batch order, evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.augment.ops import Preprocess
from distill.engine.optim import lr_factor
from distill.engine.ema import ModelEMA
from distill.engine.loop import epoch_permutation
from distill.engine.evaluate import evaluate


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


def test_ema_horizon_is_a_share_of_the_run_whatever_its_length():
    from distill.engine.ema import ema_decay

    assert ema_decay(0.05, 2000) == pytest.approx(1 - 1 / 100)  # time constant: 100 of 2,000 steps
    assert ema_decay(0.05, 20000) == pytest.approx(1 - 1 / 1000)
    assert ema_decay(0.0, 2000) == 0.0  # off
    assert ema_decay(0.05, 10) == 0.0  # shorter than one step: no averaging at all
    # After `horizon` of the run the first weights' share has fallen to 1/e, in a short and a long run.
    for steps in (1000, 10000):
        assert ema_decay(0.1, steps) ** (0.1 * steps) == pytest.approx(math.exp(-1), rel=1e-2)


def test_compile_is_automatic_for_long_single_gpu_runs_only():
    from types import SimpleNamespace

    from distill.front import config as C
    from distill.engine.device import AUTO_COMPILE_MIN_STEPS, compile_wanted

    def loop(device: str, world: int = 1):
        return SimpleNamespace(device=torch.device(device), world_size=world, steps_per_epoch=100)

    long_run = AUTO_COMPILE_MIN_STEPS // 100
    cfg = C.TeachConfig(epochs=long_run)
    assert compile_wanted(cfg, loop("cuda")) and not compile_wanted(cfg, loop("cpu"))
    assert not compile_wanted(cfg, loop("cuda", world=2))  # torchrun: not auto (DDP + CUDA graphs unmeasured)
    assert not compile_wanted(C.TeachConfig(epochs=long_run - 1), loop("cuda"))
    assert compile_wanted(C.TeachConfig(epochs=1, compile=True), loop("cpu"))  # what the user said wins
    assert not compile_wanted(C.TeachConfig(epochs=long_run, compile=False), loop("cuda"))
