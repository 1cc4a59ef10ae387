"""Batched augmentation and preprocessing (distill.augment), on the CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from distill.augment import AugmentConfig, GpuAugment, Preprocess, parse_augment, to_float
from distill.errors import UserError

NUM_CLASSES = 10


def _images(b: int = 16, size: int = 32, seed: int = 123) -> torch.Tensor:
    # No zeros (zero padding would show) and no mirror symmetry (a flip always shows).
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


def _labels(b: int = 16) -> torch.Tensor:
    return torch.arange(b) % NUM_CLASSES


def _class_constant_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Image of class k is filled with k * 10, one image per class."""
    y = torch.arange(NUM_CLASSES)
    x = (y * 10).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()
    return x, y


def _run(cfg: AugmentConfig, x: torch.Tensor, y: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    return GpuAugment(cfg, NUM_CLASSES)(x, y)


ALL_ON = AugmentConfig(color_jitter=0.4, cutout=0.5, mixup=0.2, cutmix=1.0)


def test_shapes_and_dtypes_kept():
    x, y = _images(), _labels()
    out, targets = _run(ALL_ON, x, y)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert targets.shape == (16, NUM_CLASSES) and targets.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(targets.sum(1), torch.ones(16))


def test_everything_off_is_exact_float_and_one_hot():
    x, y = _images(), _labels()
    out, targets = _run(AugmentConfig.none(), x, y)
    assert torch.equal(out, x / 255)
    assert torch.equal(targets, F.one_hot(y, NUM_CLASSES).float())


def test_flip_is_exact_and_random():
    x, y = _images(), _labels()
    out, _ = _run(dataclasses.replace(AugmentConfig.none(), flip=True), x, y)
    flipped = [bool(torch.equal(o, xi.flip(-1) / 255)) for o, xi in zip(out, x)]
    kept = [bool(torch.equal(o, xi / 255)) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is exactly one of the two
    assert any(flipped) and any(kept)


def test_crop_is_a_window_of_the_reflect_padded_input():
    p = 4
    x, y = _images(), _labels()
    out, _ = _run(dataclasses.replace(AugmentConfig.none(), crop_padding=p), x, y)
    padded = F.pad(x, (p,) * 4, mode="reflect").float() / 255
    offsets = []
    for o, pad in zip(out, padded):
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.equal(o, pad[:, dy:dy + 32, dx:dx + 32])]
        assert found, "crop is no window of the padded input with offsets in [0, 2p]"
        offsets.append(found[0])
    assert len(set(offsets)) > 1 and any(off != (p, p) for off in offsets)
    assert out.min() > 0  # shifted windows contain padding, and it is reflected, not zeros


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mix_targets_match_pixel_means(mix: str):
    x, y = _class_constant_batch()
    cfg = dataclasses.replace(AugmentConfig.none(), **{mix: 1.0})
    out, targets = _run(cfg, x, y)
    torch.testing.assert_close(targets.sum(1), torch.ones(NUM_CLASSES))
    assert ((targets > 0).sum(1) <= 2).all()
    expected = targets @ (torch.arange(NUM_CLASSES).float() * 10)  # mixing weights x class values
    torch.testing.assert_close(out.mean((1, 2, 3)) * 255, expected, atol=1e-3, rtol=1e-5)
    assert (targets.max(1).values < 1).any()  # something was actually mixed


def test_cutmix_lam_is_pasted_area():
    x, y = _class_constant_batch()
    out, targets = _run(dataclasses.replace(AugmentConfig.none(), cutmix=1.0), x, y, seed=3)
    own = torch.isclose(out * 255, (y * 10).float().view(-1, 1, 1, 1)).float().mean((1, 2, 3))
    torch.testing.assert_close(own, targets[torch.arange(NUM_CLASSES), y])
    values = (out * 255).round()
    assert all(len(v.unique()) <= 2 for v in values)  # pasted, not blended


def test_mixup_and_cutmix_both_on_picks_each():
    x, y = _class_constant_batch()
    cfg = dataclasses.replace(AugmentConfig.none(), mixup=1.0, cutmix=1.0)
    torch.manual_seed(0)
    aug = GpuAugment(cfg, NUM_CLASSES)
    kinds = set()
    for _ in range(12):
        out, _ = aug(x, y)
        steps = out * 255 / 10  # CutMix keeps every pixel a class value (a multiple of 10); MixUp blends
        kinds.add("cutmix" if torch.allclose(steps, steps.round(), atol=1e-3) else "mixup")
    assert kinds == {"mixup", "cutmix"}


def test_cutout_erases_with_zeros():
    x, y = _images(), _labels()
    out, _ = _run(dataclasses.replace(AugmentConfig.none(), cutout=1.0), x, y)
    assert ((out == 0).flatten(1).any(1)).all()


def test_same_seed_same_output():
    x, y = _images(), _labels()
    a, b, c = _run(ALL_ON, x, y, seed=5), _run(ALL_ON, x, y, seed=5), _run(ALL_ON, x, y, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_to_float_rejects_float_input():
    with pytest.raises(TypeError):
        to_float(torch.rand(1, 3, 4, 4))


def test_preprocess_normalizes():
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    x = torch.rand(4, 3, 8, 8)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    pre = Preprocess(mean, std)
    torch.testing.assert_close(pre(x), expected)
    assert len(pre.state_dict()) == 0 and {n for n, _ in pre.named_buffers()} == {"mean", "std"}
    channels_last = pre(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(pre(x.bfloat16()).float(), expected, atol=0.05, rtol=0.02)


def test_preprocess_resizes():
    pre = Preprocess([0.5] * 3, [0.5] * 3, image_size=64)
    x = torch.rand(2, 3, 32, 32)
    out = pre(x)
    assert out.shape == (2, 3, 64, 64)
    resized = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, (resized - 0.5) / 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pre(x.contiguous(memory_format=torch.channels_last)).shape == (2, 3, 64, 64)
    assert Preprocess([0.0] * 3, [1.0] * 3, image_size=32)(x).equal(x)


def test_parse_augment_forms():
    assert parse_augment("default") == AugmentConfig()
    assert parse_augment("none") == AugmentConfig.none()
    assert parse_augment("mixup=0.2,cutout=0.5") == AugmentConfig(mixup=0.2, cutout=0.5)
    assert parse_augment("none,flip=1") == dataclasses.replace(AugmentConfig.none(), flip=True)
    assert parse_augment(" default , crop_padding = 2, flip=false ") == AugmentConfig(crop_padding=2, flip=False)
    assert parse_augment("color_jitter=0.4,cutmix=1") == AugmentConfig(color_jitter=0.4, cutmix=1.0)


@pytest.mark.parametrize("spec", ["foo=1", "flip=maybe", "cutout=2", "mixup", "crop_padding=1.5",
                                  "mixup=nan", "mixup=-1", "color_jitter=3", "mixup=0.2,none", "flip="])
def test_parse_augment_rejects(spec: str):
    with pytest.raises(UserError, match="crop_padding, flip, color_jitter, cutout, mixup, cutmix"):
        parse_augment(spec)
