"""Train-time augmentation on whole batches on the batch's device, and per-model preprocessing.

Images travel as uint8 (B, 3, H, W) until `GpuAugment` turns them into float [0, 1] images and soft
targets (B, num_classes). Normalization is not done here: each model (teacher or student) has its own
statistics and input size, so it puts a `Preprocess` in front of itself.

Random draws use torch's global RNG (our ops draw on the batch's device, kornia's on the CPU), so
`torch.manual_seed` makes a run reproducible. No op loops over the samples in Python.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import UserError

# Allowed [low, high] for each numeric field; the hue of ColorJitter is s/4 and kornia caps it at 0.5.
_LIMITS: dict[str, tuple[float, float]] = {
    "crop_padding": (0, math.inf),
    "color_jitter": (0.0, 2.0),
    "cutout": (0.0, 1.0),
    "mixup": (0.0, math.inf),
    "cutmix": (0.0, math.inf),
}


@dataclass
class AugmentConfig:
    crop_padding: int = 4  # random crop after reflect padding: the standard CIFAR translation; 0 disables
    flip: bool = True  # horizontal flip with p=0.5: CIFAR classes look the same mirrored
    color_jitter: float = 0.0  # strength s: brightness/contrast/saturation = s, hue = s/4 (kornia); 0 disables
    cutout: float = 0.0  # probability of RandomErasing (kornia): robustness to occlusion; 0 disables
    mixup: float = 0.0  # Beta(a, a) concentration for MixUp: softer targets, which KD profits from; 0 disables
    cutmix: float = 0.0  # Beta(a, a) concentration for CutMix, 0 disables; with both on, each batch picks one at random

    def __post_init__(self) -> None:
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and low <= value <= high):  # also rejects NaN
                raise UserError(f"augment {name}={value} is out of range: expected a value in [{low}, {high}]")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Everything off: the images are only converted to float."""
        return cls(crop_padding=0, flip=False)


# ---------------------------------------------------------------------------------------------- spec


_BASES: dict[str, Callable[[], AugmentConfig]] = {"default": AugmentConfig, "none": AugmentConfig.none}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse_bool(raw: str) -> bool:
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(raw)


# The converter follows each field's default type, so a new field needs no parser change.
_CONVERTERS: dict[type, Callable[[str], object]] = {bool: _parse_bool, int: int, float: float}


def _valid_keys() -> str:
    return ", ".join(f.name for f in dataclasses.fields(AugmentConfig))


def _parse_override(item: str) -> tuple[str, object]:
    defaults = AugmentConfig()
    valid = _valid_keys()
    key, sep, raw = (part.strip() for part in item.partition("="))
    if not sep or not hasattr(defaults, key):
        raise UserError(f"bad augment item '{item}': expected key=value with key one of {valid} "
                        f"(optionally after 'default' or 'none')")
    kind = type(getattr(defaults, key))
    try:
        return key, _CONVERTERS[kind](raw)
    except ValueError:
        message = f"bad augment value '{item}': {key} expects type {kind.__name__}; valid keys: {valid}"
        raise UserError(message) from None


def parse_augment(spec: str) -> AugmentConfig:
    """'default', 'none', or key=value overrides on top of either: 'mixup=0.2,cutout=0.5', 'none,flip=1'."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    base = _BASES[items.pop(0)]() if items and items[0] in _BASES else AugmentConfig()
    overrides = dict(_parse_override(item) for item in items)
    try:
        return dataclasses.replace(base, **overrides)  # __post_init__ checks the ranges
    except UserError as err:
        raise UserError(f"{err}; valid keys: {_valid_keys()}") from None


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


# MixUp and CutMix are our own batched ops, not kornia's: RandomMixUpV2 draws lambda from a Uniform
# range, not Beta(a, a), and RandomCutMixV2 pastes with one boolean-mask copy per mix and returns
# (y, y_perm, lam) rows we would have to re-derive anyway. Both here use one lambda per sample.
def mixup(x: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """MixUp with lam ~ Beta(alpha, alpha) per sample: lam * x + (1 - lam) * partner."""
    lam = _sample_beta(alpha, x.shape[0], x.device)
    lam_x = lam.view(-1, 1, 1, 1).to(x.dtype)
    return lam_x * x + (1 - lam_x) * _partner(x), mixed_targets(targets, lam)


def cutmix(x: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """CutMix: paste a box of the partner into each sample, one box per sample (timm's box rule).

    The box covers about 1 - lam0 of the image, lam0 ~ Beta(alpha, alpha); it is clipped at the border,
    so the targets use lam recomputed from the clipped area: the exact fraction of own pixels.
    """
    b, _, h, w = x.shape
    cut = (1 - _sample_beta(alpha, b, x.device)).sqrt()
    half_h, half_w = (cut * h).long() // 2, (cut * w).long() // 2
    cy, cx = torch.randint(0, h, (b,), device=x.device), torch.randint(0, w, (b,), device=x.device)
    y0, y1 = (cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h)
    x0, x1 = (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows >= y0.view(-1, 1, 1)) & (rows < y1.view(-1, 1, 1))
              & (cols >= x0.view(-1, 1, 1)) & (cols < x1.view(-1, 1, 1)))
    lam = 1 - ((y1 - y0) * (x1 - x0)).to(torch.float32) / (h * w)
    return torch.where(inside.unsqueeze(1), _partner(x), x), mixed_targets(targets, lam)


# ------------------------------------------------------------------------------------------ modules


class GpuAugment(nn.Module):
    """uint8 (B, 3, H, W) images and int64 (B,) labels -> float32 [0, 1] images and (B, C) soft targets.

    Train time only, on whatever device the batch is on. No normalization (see `Preprocess`).
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        s = cfg.color_jitter
        # Kornia draws these parameters on the CPU as (B,) tensors and moves them over once per batch.
        self.jitter = K.ColorJitter(s, s, s, s / 4, p=1.0) if s > 0 else None
        self.erase = K.RandomErasing(p=cfg.cutout) if cfg.cutout > 0 else None
        self.mixes = [(fn, a) for fn, a in ((mixup, cfg.mixup), (cutmix, cfg.cutmix)) if a > 0]

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = random_crop(x, self.cfg.crop_padding)  # geometry on uint8: a quarter of float32's bytes
        if self.cfg.flip:
            x = random_flip(x)
        x = to_float(x)
        for op in (self.jitter, self.erase):
            if op is not None:
                x = op(x)
        targets = F.one_hot(y, self.num_classes).to(torch.float32)
        if self.mixes:
            # The choice is drawn on the CPU: Python needs its value, and a GPU draw would sync.
            pick = int(torch.randint(len(self.mixes), ())) if len(self.mixes) > 1 else 0
            fn, alpha = self.mixes[pick]
            x, targets = fn(x, targets, alpha)
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
