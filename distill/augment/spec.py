"""The --augment spec, without torch: `AugmentConfig` and `parse_augment`.

Kept apart from distill.augment.ops (the batched ops, which need torch and kornia) so that the command line
checks a spec like 'strong,mixup=0.2' before torch is imported; distill.augment.ops re-exports both names.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from distill.errors import UserError
from distill.front.options import Range, shown

# Policies applied per sample after crop and flip (the `policy` field); distill.augment.ops maps each name to its op.
POLICIES = ("none", "trivial")
# What uncovered (policy geometry) and erased (cutout, erasing) pixels become (the `fill` field).
FILLS = ("mean", "black")

# Allowed [low, high] for each numeric field; ColorJitter's hue range is s/4 turns, capped at 0.5 as kornia's.
_LIMITS: dict[str, tuple[float, float]] = {
    "crop_padding": (0, math.inf),
    "policy_translate": (0.0, math.inf),
    "color_jitter": (0.0, 2.0),
    "cutout": (0.0, 1.0),
    "cutout_size": (0, math.inf),
    "mixup": (0.01, 100.0),
    "cutmix": (0.01, 100.0),
    "mix_prob": (0.0, 1.0),
}
# Fields where 0 switches the op off and is allowed below the range. The Beta(a, a) concentrations of MixUp
# and CutMix: below ~0.005 torch's Beta sampler returns lam = 0.5 for many samples (24% at 0.001, all at 1e-10:
# even blends, the opposite of a small a), above ~3e38 it overflows float32, and at 100 lam is already
# 0.5 +- 0.035 (larger values change nothing).
_ZERO_IS_OFF = ("mixup", "cutmix")
# Allowed names for each string field.
_CHOICES: dict[str, tuple[str, ...]] = {"policy": POLICIES, "fill": FILLS}


@dataclass
class AugmentConfig:
    crop_padding: int = 4  # random crop after reflect padding: the standard CIFAR translation; 0 disables
    flip: bool = True  # horizontal flip with p=0.5: CIFAR classes look the same mirrored
    policy: str = "none"  # "trivial": TrivialAugment-wide per sample: crop+flip regularize a ResNet50 too little
    policy_translate: float = 32.0  # TrivialAugment's shift in pixels at the top bin: 32 = the wide space's
    color_jitter: float = 0.0  # strength s: brightness/contrast/saturation = s, hue = s/4 (kornia); 0 disables
    cutout: float = 0.0  # per-sample probability of erasing a box: robustness to occlusion; 0 disables
    cutout_size: int = 0  # box: 0 = RandomErasing's (kornia: 2-33% of the area); n = DeVries' n x n square
    mixup: float = 0.0  # Beta(a, a) concentration for MixUp: softer targets, which KD profits from; 0 disables
    cutmix: float = 0.0  # Beta(a, a) concentration for CutMix, 0 disables; with both on, each sample picks one
    mix_prob: float = 1.0  # per-sample probability of mixing at all (else lam = 1): mixing slows convergence
    # Erased (cutout) and uncovered (policy geometry) pixels: "mean" = the training set's mean colour, what
    # a model sees as 0 after its normalization (DeVries & Taylor's Cutout, the AutoAugment CIFAR code);
    # "black" = 0 (torchvision's and the TrivialAugment authors' geometric fill, kornia's RandomErasing).
    fill: str = "mean"

    def __post_init__(self) -> None:
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            off = value == 0 and name in _ZERO_IS_OFF
            if not (off or value in Range(low, high)):  # also rejects NaN, infinities and ints past 64 bits
                zero = "0 (off) or " if name in _ZERO_IS_OFF else ""
                raise UserError(f"augment {name}={shown(value)} is out of range: expected {zero}a value in [{low}, {high}]")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise UserError(f"augment {name}='{getattr(self, name)}' is not valid: expected one of "
                                f"{', '.join(choices)}")

    @classmethod
    def none(cls) -> AugmentConfig:
        """Everything off: the images are only converted to float."""
        return cls(crop_padding=0, flip=False)

    @classmethod
    def strong(cls) -> AugmentConfig:
        """Crop + flip + TrivialAugment-wide (10 px translations) + 16x16 Cutout + CutMix/MixUp on half the
        samples, erased and uncovered pixels at the mean colour: for a 40-60 epoch ResNet50 teacher."""
        return cls(
            policy="trivial",  # tuning-free, matches or beats AutoAugment on CIFAR (Müller & Hutter)
            # The wide space's 32 px top shift moves a 32x32 image out entirely (and half its bins, >= 16 px,
            # leave it at least half blank): the authors ran it for 200 epochs. 10 px is the CIFAR range of the
            # AutoAugment code (augmentation_transforms.py, int_parameter(level, 10)) and of the TrivialAugment
            # authors' standard space (aug_lib.py MinMax(0, 10); their README recommends it for very cheap
            # setups). The other wide ranges (shear 0.99, rotate 135) keep part of the image and stay.
            policy_translate=10.0,
            # DeVries & Taylor's CIFAR-10 setting, also in the TrivialAugment authors' wide-space CIFAR-10
            # config (confs/wresnet28x10_cifar10_b128_maxlr.1_weighteduniaug_w=0,1_widesesp_nowarmup_200epochs
            # .yaml: cutout 16); at 31-40 epochs airbench96 (96% on CIFAR-10) still erases a 12x12 square.
            # Applied after mixing: one box per image, never a partner's box pasted or blended in
            # (bench/cpu_augment.md).
            cutout=1.0,
            cutout_size=16,
            cutmix=1.0,  # Yun et al.'s CIFAR alpha: the pasted area is uniform
            mixup=0.2,  # low alpha, lam mostly near 0 or 1: a mild blend for the samples not pasted
            # Mixing pays off on long schedules; ours is 40-60 teacher epochs, so only half the samples mix
            # (each picks CutMix or MixUp): a quarter pasted, a quarter blended.
            mix_prob=0.5,
        )  # fill: the default "mean", as DeVries' Cutout and the AutoAugment CIFAR code (0 after normalizing)


# ---------------------------------------------------------------------------------------------- spec


_BASES: dict[str, Callable[[], AugmentConfig]] = {
    "default": AugmentConfig, "none": AugmentConfig.none, "strong": AugmentConfig.strong}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse_bool(raw: str) -> bool:
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(raw)


# The converter follows each field's default type, so a new field needs no parser change.
# A string field takes the raw text; __post_init__ checks it against _CHOICES.
_CONVERTERS: dict[type, Callable[[str], object]] = {bool: _parse_bool, int: int, float: float, str: str}


def _valid_keys() -> str:
    return ", ".join(f.name for f in dataclasses.fields(AugmentConfig))


def _parse_override(item: str) -> tuple[str, object]:
    defaults = AugmentConfig()
    valid = _valid_keys()
    key, sep, raw = (part.strip() for part in item.partition("="))
    if not sep or not hasattr(defaults, key):
        raise UserError(f"bad augment item '{item}': expected key=value with key one of {valid} "
                        f"(optionally after {', '.join(repr(b) for b in _BASES)})")
    kind = type(getattr(defaults, key))
    try:
        return key, _CONVERTERS[kind](raw)
    except ValueError:
        message = f"bad augment value '{item}': {key} expects type {kind.__name__}; valid keys: {valid}"
        raise UserError(message) from None


def parse_augment(spec: str) -> AugmentConfig:
    """'default', 'none', 'strong', or key=value overrides on top of one: 'mixup=0.2,cutout=0.5', 'strong,mixup=0'."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    base = _BASES[items.pop(0)]() if items and items[0] in _BASES else AugmentConfig()
    overrides = dict(_parse_override(item) for item in items)
    try:
        return dataclasses.replace(base, **overrides)  # __post_init__ checks the ranges
    except UserError as err:
        raise UserError(f"{err}; valid keys: {_valid_keys()}") from None


# ---------------------------------------------------------------------------------------- per-run mixing


MIX_KEYS = ("mixup", "cutmix", "mix_prob")  # the keys a run's own --mix may set


@dataclass(frozen=True)
class Mixing:
    """MixUp/CutMix one run draws on top of its group's shared batch (`--mix`): a KD student and its
    teacher then see the same mixed image ("function matching", Beyer et al. 2022) while a baseline of the
    same group keeps the unmixed batch."""

    mixup: float
    cutmix: float
    mix_prob: float


def parse_mix(spec: str) -> Mixing | None:
    """'none' (no mixing of its own), or overrides of the mixing keys: 'mixup=0.2,cutmix=1.0,mix_prob=0.5'."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items or items == ["none"]:
        return None
    values = {}
    for item in items:
        key, _, raw = (part.strip() for part in item.partition("="))
        try:
            values[key] = float(raw) if key in MIX_KEYS else None
        except ValueError:
            values[key] = None
        if values[key] is None:
            raise UserError(f"bad --mix item '{item}': --mix takes 'none' or numbers for {', '.join(MIX_KEYS)}, "
                            f"e.g. --mix mixup=0.2,cutmix=1.0,mix_prob=0.5")
    cfg = dataclasses.replace(AugmentConfig.none(), **values)  # the ranges of --augment's same keys
    if cfg.mixup == 0 and cfg.cutmix == 0:
        raise UserError(f"--mix '{spec}' mixes nothing: give mixup or cutmix a concentration, or use --mix none")
    return Mixing(cfg.mixup, cfg.cutmix, cfg.mix_prob)
