"""Train-time augmentation on whole batches on the batch's device, and per-model preprocessing.

Images travel as uint8 (B, 3, H, W) until `GpuAugment` turns them into float [0, 1] images and soft
targets (B, num_classes). Normalization is not done here: each model (teacher or student) has its own
statistics and input size, so it puts a `Preprocess` in front of itself.

Every parameter is drawn per sample from torch's global RNG on the batch's device (the one exception:
ColorJitter's per-call order of its four steps, drawn on the CPU like kornia's), so `torch.manual_seed`
makes a run reproducible. No op loops over the samples in Python and none waits for the device.
Kornia's augmentation modules serve as the reference in tests: they draw their parameters on the CPU
and launch many small kernels (3-8% of a ResNet50 step each on an H200).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from kornia.enhance import (adjust_brightness_accumulative, adjust_contrast_with_mean_subtraction, adjust_hue,
                            adjust_saturation_with_gray_subtraction)
from torch import Tensor, nn

from distill.augment.trivial import device_constant, fill_levels, trivial_augment
from distill.augment.spec import AugmentConfig, parse_augment  # noqa: F401  (torch-free; re-exported here)

# The op of each policy name of the spec (tests/front/test_cli.py checks they match augment_spec.POLICIES); each
# takes uint8 images, the fill in uint8 levels per channel and the top translation in pixels.
_POLICIES: dict[str, Callable[..., Tensor] | None] = {"none": None, "trivial": trivial_augment}
# The fill colour in [0, 1] when `GpuAugment` is given no training mean: mid grey, which DALI's
# trivial_augment_wide (fill_value=128) and timm's auto-augment (_FILL = 128) use when they know no mean.
DEFAULT_MEAN = (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------------------- batch ops


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1] (train and eval)."""
    if x.dtype != torch.uint8:  # a float input would be divided twice without complaint
        raise TypeError(f"to_float expects uint8 images, got {x.dtype}")
    return x.to(torch.float32).div_(255)


def random_crop(x: Tensor, padding: int) -> Tensor:
    """Kornia's RandomCrop(size=(H, W), padding=p, padding_mode='reflect'), as one pad and one gather.

    Kornia crops each sample in a Python loop; here every sample gets offsets (dy, dx) in [0, 2p] and a
    single gather over the flattened padded planes picks all windows at once (works on uint8 too).
    """
    if padding == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    width = w + 2 * padding
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b, 1, 1), device=x.device)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
    index = (rows * width + cols).view(b, 1, h * w).expand(b, c, h * w)  # expand: no copy per channel
    return padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


def random_flip(x: Tensor) -> Tensor:
    """Mirror each sample horizontally with probability 0.5."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _uniform(low: float, high: float, n: int, device: torch.device) -> Tensor:
    """n draws from U[low, high) on `device` (kornia's UniformDistribution: low + rand * (high - low))."""
    return low + torch.rand(n, device=device) * (high - low)


# ------------------------------------------------------------------------------------ colour jitter


# kornia's ColorJitter steps, by its order indices (brightness, contrast, saturation, hue). kornia.enhance
# is plain batched tensor code; only kornia's module is slow (CPU draws, `.any()` guards that sync).
_JITTER_STEPS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    adjust_brightness_accumulative,  # x * f
    adjust_contrast_with_mean_subtraction,  # blend with the image's mean grayscale
    adjust_saturation_with_gray_subtraction,  # blend with the grayscale
    lambda x, turns: adjust_hue(x, turns * 2 * math.pi),  # HSV hue shift, factor in turns
)


def jitter_factors(strength: float, n: int, device: torch.device) -> Tensor:
    """(4, n) per-sample factors of kornia's ColorJitter(s, s, s, s/4): brightness, contrast and
    saturation ~ U[max(0, 1 - s), 1 + s], hue ~ U[-s/4, s/4] turns."""
    low, high = max(0.0, 1 - strength), 1 + strength
    scales = [_uniform(low, high, n, device) for _ in range(3)]
    return torch.stack([*scales, _uniform(-strength / 4, strength / 4, n, device)])


def color_jitter(x: Tensor, strength: float, order: list[int] | None = None) -> Tensor:
    """kornia's ColorJitter(s, s, s, s/4, p=1) on float [0, 1] images, batched on the images' device.

    As kornia: factors per sample, the four steps in ONE random order per call (`order`, indices into
    brightness, contrast, saturation, hue), each step clamping to [0, 1]. The order is drawn on the CPU as
    kornia does: Python sequences the steps, and a device draw would make the host wait to read it.
    """
    factors = jitter_factors(strength, x.shape[0], x.device)
    for step in torch.randperm(4).tolist() if order is None else order:
        x = _JITTER_STEPS[step](x, factors[step])
    return x.clamp(0, 1)


# ------------------------------------------------------------------------------------ boxes: cutout


def _box_mask(boxes: tuple[Tensor, Tensor, Tensor, Tensor], h: int, w: int) -> Tensor:
    """(B, 1, H, W) mask of the per-sample boxes (y0, y1, x0, x1), each (B,), ends exclusive."""
    y0, y1, x0, x1 = (t.view(-1, 1, 1, 1) for t in boxes)
    rows = torch.arange(h, device=y0.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=y0.device).view(1, 1, 1, w)
    return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def centred_boxes(half_h: Tensor, half_w: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Boxes of half-sizes (B,) around a centre uniform over the pixels, clipped at the border.

    The box rule of DeVries & Taylor's Cutout and of CutMix (timm): a box can hang over the border.
    """
    cy = torch.randint(0, h, half_h.shape, device=half_h.device)
    cx = torch.randint(0, w, half_w.shape, device=half_w.device)
    return (cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h), (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w)


def erasing_boxes(n: int, h: int, w: int, device: torch.device, scale: tuple[float, float] = (0.02, 0.33),
                  ratio: tuple[float, float] = (0.3, 3.3)) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Boxes (y0, y1, x0, x1) of kornia's RandomErasing (RectangleEraseGenerator), per sample.

    Area ~ U(scale) * H * W; aspect h/w from U(ratio[0], 1) or U(1, ratio[1]) with p=0.5 each; sides
    rounded and clamped to [1, H] / [1, W]; top-left uniform over the positions that keep the box inside.
    """
    area = _uniform(*scale, n, device) * (h * w)
    aspect = torch.where(torch.rand(n, device=device) < 0.5, _uniform(ratio[0], 1.0, n, device),
                         _uniform(1.0, ratio[1], n, device))
    box_h = (area * aspect).sqrt().round().clamp(1, h)
    box_w = (area / aspect).sqrt().round().clamp(1, w)
    y0 = (torch.rand(n, device=device) * (h - box_h + 1)).floor()
    x0 = (torch.rand(n, device=device) * (w - box_w + 1)).floor()
    return tuple(t.to(torch.int64) for t in (y0, y0 + box_h, x0, x0 + box_w))


def cutout(x: Tensor, prob: float, size: int = 0, fill: float | Sequence[float] = 0.0) -> Tensor:
    """Erase one box per sample to `fill` (one value or one per channel), each sample with probability `prob`.

    size 0: kornia's RandomErasing(p=prob) boxes (`erasing_boxes`); size n: DeVries & Taylor 2017's
    Cutout, an n x n square centred uniformly over the image and clipped at the border (n // 2 on each
    side of the centre, as their code: an odd n erases n - 1). DeVries' code (uoguelph-mlrg/Cutout) zeroes
    the box after normalization, as the TrivialAugment authors' CIFAR pipeline does (TrivialAugment/data.py
    appends CutoutDefault after Normalize): pass the training mean as `fill` for the same image. kornia's
    RandomErasing fills with value=0 in whatever space it gets (black on [0, 1] images).
    """
    b, _, h, w = x.shape
    if size > 0:
        half = torch.full((b,), size // 2, device=x.device)
        boxes = centred_boxes(half, half, h, w)
    else:
        boxes = erasing_boxes(b, h, w, x.device)
    erase = _box_mask(boxes, h, w) & (torch.rand(b, device=x.device) < prob).view(-1, 1, 1, 1)
    return torch.where(erase, device_constant(fill_levels(fill, x.shape[1]), x.device, x.dtype), x)


# --------------------------------------------------------------------------------------- mixing


def _partner(t: Tensor) -> Tensor:
    # Batches are drawn in random order, so rolling by one pairs each sample with a random other one
    # (never itself when B > 1) without drawing a permutation. Images and targets must share this.
    return t.roll(1, dims=0)


def mixed_targets(targets: Tensor, lam: Tensor) -> Tensor:
    """Soft targets of a mix that takes the fraction `lam` (B,) of each output from its own image."""
    lam = lam.view(-1, 1).to(targets.dtype)
    return lam * targets + (1 - lam) * _partner(targets)


def _sample_beta(alpha: float, n: int, device: torch.device) -> Tensor:
    concentration = torch.full((n,), float(alpha), device=device)
    return torch.distributions.Beta(concentration, concentration, validate_args=False).sample()


def _cutmix_boxes(alpha: float, n: int, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """CutMix's pasted region (B, 1, H, W) and the exact fraction of own pixels lam (B,).

    The box covers about 1 - lam0 of the image, lam0 ~ Beta(alpha, alpha) (timm's box rule); clipping at
    the border shrinks it, so lam is recomputed from the clipped area.
    """
    cut = (1 - _sample_beta(alpha, n, device)).sqrt()
    boxes = centred_boxes((cut * h).long() // 2, (cut * w).long() // 2, h, w)
    y0, y1, x0, x1 = boxes
    return _box_mask(boxes, h, w), 1 - ((y1 - y0) * (x1 - x0)).to(torch.float32) / (h * w)


# MixUp and CutMix are our own batched ops, not kornia's: RandomMixUpV2 draws lambda from a Uniform
# range, not Beta(a, a), and RandomCutMixV2 pastes with one boolean-mask copy per mix and returns
# (y, y_perm, lam) rows we would have to re-derive anyway.
def mix(x: Tensor, targets: Tensor, mixup_alpha: float, cutmix_alpha: float,
        prob: float = 1.0) -> tuple[Tensor, Tensor]:
    """MixUp (Zhang et al. 2018) and/or CutMix (Yun et al. 2019) with the partner, decided per sample.

    Each sample mixes with probability `prob` (else lam = 1: image and target untouched); a mixing sample
    uses CutMix or MixUp with p=0.5 each when both alphas are > 0. MixUp: lam ~ Beta(a, a) and
    lam * x + (1 - lam) * partner; CutMix: see `_cutmix_boxes`. Targets mix with the same lam.
    """
    b, _, h, w = x.shape
    partner = _partner(x)  # the unmixed partner, which `mixed_targets` assumes
    mixing = torch.rand(b, device=x.device) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        pasting = mixing & (torch.rand(b, device=x.device) < 0.5)
    else:
        pasting = mixing if cutmix_alpha > 0 else torch.zeros_like(mixing)
    lam = torch.ones(b, device=x.device)
    if mixup_alpha > 0:
        lam = torch.where(mixing & ~pasting, _sample_beta(mixup_alpha, b, x.device), lam)
        lam_x = lam.view(-1, 1, 1, 1).to(x.dtype)
        out = lam_x * x + (1 - lam_x) * partner  # lam = 1 leaves a sample exactly as it was
    else:
        out = x
    if cutmix_alpha > 0:
        region, lam_box = _cutmix_boxes(cutmix_alpha, b, h, w, x.device)
        out = torch.where(region & pasting.view(-1, 1, 1, 1), partner, out)
        lam = torch.where(pasting, lam_box, lam)
    return out, mixed_targets(targets, lam)


def mixup(x: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """MixUp on every sample, lam ~ Beta(alpha, alpha) per sample."""
    return mix(x, targets, mixup_alpha=alpha, cutmix_alpha=0.0)


def cutmix(x: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """CutMix on every sample: one box of the partner pasted per sample."""
    return mix(x, targets, mixup_alpha=0.0, cutmix_alpha=alpha)


# ------------------------------------------------------------------------------------------ modules


class GpuAugment(nn.Module):
    """uint8 (B, 3, H, W) images and int64 (B,) labels -> float32 [0, 1] images and (B, C) soft targets.

    Train time only, on whatever device the batch is on. No normalization (see `Preprocess`).
    Order: crop, flip, policy (on uint8), to_float, colour jitter, mix, cutout.

    mean: the training set's per-channel mean in [0, 1], the fill of cfg.fill="mean" (a model then sees 0
    there after its normalization); without it, mid grey (`DEFAULT_MEAN`).
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, mean: Sequence[float] | None = None):
        super().__init__()
        mean = tuple(float(m) for m in (DEFAULT_MEAN if mean is None else mean))
        if not all(0.0 <= m <= 1.0 for m in mean):
            raise ValueError(f"mean {mean} must be in [0, 1] (images are scaled to [0, 1] before normalization)")
        self.cfg = cfg
        self.num_classes = num_classes
        self.policy = _POLICIES[cfg.policy]
        self.fill = mean if cfg.fill == "mean" else (0.0,) * len(mean)  # in [0, 1]

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        x = random_crop(x, cfg.crop_padding)  # geometry on uint8: a quarter of float32's bytes
        if cfg.flip:
            x = random_flip(x)
        if self.policy is not None:
            # On uint8, where torchvision defines TrivialAugmentWide (8-bit posterize and equalize, blends
            # truncated to uint8): each op matches torchvision's exactly, and moves a quarter of the bytes.
            x = self.policy(x, fill=tuple(255 * f for f in self.fill), max_translate=cfg.policy_translate)
        x = to_float(x)
        if cfg.color_jitter > 0:
            x = color_jitter(x, cfg.color_jitter)
        targets = F.one_hot(y, self.num_classes).to(torch.float32)
        if cfg.mixup > 0 or cfg.cutmix > 0:
            x, targets = mix(x, targets, cfg.mixup, cfg.cutmix, cfg.mix_prob)
        if cfg.cutout > 0:
            # After mixing: each image gets exactly its one box, and CutMix never pastes a partner's box
            # into it (bench/cpu_augment.md measures the orders).
            x = cutout(x, cfg.cutout, cfg.cutout_size, self.fill)
        return x, targets


class Preprocess(nn.Module):
    """float [0,1] images -> what a model wants: optional resize to `image_size` (bilinear, antialias off,
    F.interpolate) then per-channel normalization."""

    def __init__(self, mean: list[float], std: list[float], image_size: int | None = None):
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean {mean} and std {std} need the same length and std > 0")
        # Not persistent: recipe constants, not learned state, so a model's checkpoint loads the same
        # whether or not it was saved with a Preprocess in front of it.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.image_size = image_size

    def resize(self, x: Tensor) -> Tensor:
        size = self.image_size
        if size is None or x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.resize(x)
        # Buffers in x's dtype: a bf16 input stays bf16 instead of being promoted by float32 buffers.
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
