"""TrivialAugment (wide) with one op and one magnitude drawn per sample, batched on the batch's device.

Müller & Hutter 2021, "TrivialAugment: Tuning-free Yet State-of-the-Art Data Augmentation": every image
gets one op drawn uniformly from `OPS`, at a magnitude drawn uniformly from that op's `NUM_BINS` bins;
a signed op negates its magnitude with p=0.5. The op list, the ranges ("wide") and each op's semantics
on uint8 tensors are torchvision's `TrivialAugmentWide` (transforms/autoaugment.py `_apply_op`, and
transforms/_functional_tensor.py): nearest interpolation, blends truncated to uint8, Translate in whole
pixels.

Two settings are parameters of the ops, defaulting to the authors' own CIFAR code (automl/trivialaugment,
aug_lib.py, `set_augmentation_space('wide_standard', 31)`), which torchvision's defaults also equal:
- `fill`, what the geometric ops (shear, translate, rotate) put where no input pixel lands: default 0
  (black). aug_lib calls PIL's `transform`/`rotate` without a fill colour, i.e. black, and torchvision's
  fill=None leaves grid_sample's zeros. Other code fills with the mean instead: the AutoAugment CIFAR code
  (tensorflow/models research/autoaugment/augmentation_transforms.py, `pil_unwrap`) sets uncovered pixels
  to 0 after normalization, i.e. the training mean; DALI's trivial_augment_wide fills with 128.
- `max_translate`, the shift at the top magnitude bin, in pixels: default 32. The wide space is absolute
  pixels whatever the image size (aug_lib `translate=MinMax(0, 32)`; torchvision and DALI's
  `max_translate_abs` 32 too), so on 32x32 images the top bin moves the image out entirely. The narrower
  spaces in the same file use 10 px (`MinMaxVals` default, the AutoAugment CIFAR code's
  `int_parameter(level, 10)`) and 14.4 px (RandAugment/UniformAugment: 0.45 of 32).

kornia's `auto.TrivialAugment` draws one op per call for the whole batch; here each op family is
computed once for the whole batch with per-sample parameters and kept only where a sample drew it
(torch.where). No Python loop over samples and no boolean indexing, whose data-dependent shape would
make the host wait for the GPU.
"""

from __future__ import annotations

import functools
import operator
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# torchvision's TrivialAugmentWide order; an op's index is its id in `op` tensors.
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
NUM_BINS = 31
WIDE_TRANSLATE = 32.0  # pixels at the top bin: the wide space's, as the authors' aug_lib and torchvision
_ID = {name: index for index, name in enumerate(OPS)}
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BLENDS = ("Brightness", "Color", "Contrast", "Sharpness")


def magnitude_table(num_bins: int = NUM_BINS, max_translate: float = WIDE_TRANSLATE) -> tuple[Tensor, Tensor]:
    """(len(OPS), num_bins) float64 magnitudes and (len(OPS),) signed flags, on the CPU.

    The values of torchvision's `TrivialAugmentWide._augmentation_space` (float32 linspace, as there),
    TranslateX/Y up to `max_translate` pixels instead of 32; ops without a magnitude get a row of zeros.
    """
    def linear(top: float) -> Tensor:
        return torch.linspace(0.0, top, num_bins)

    zeros = torch.zeros(num_bins)
    rows = {
        "Identity": (zeros, False), "ShearX": (linear(0.99), True), "ShearY": (linear(0.99), True),
        "TranslateX": (linear(max_translate), True), "TranslateY": (linear(max_translate), True),
        "Rotate": (linear(135.0), True),
        "Brightness": (linear(0.99), True), "Color": (linear(0.99), True), "Contrast": (linear(0.99), True),
        "Sharpness": (linear(0.99), True),
        "Posterize": (8 - (torch.arange(num_bins) / ((num_bins - 1) / 6)).round(), False),
        "Solarize": (torch.linspace(255.0, 0.0, num_bins), False),
        "AutoContrast": (zeros, False), "Equalize": (zeros, False),
    }
    table = torch.stack([rows[name][0].to(torch.float64) for name in OPS])
    return table, torch.tensor([rows[name][1] for name in OPS])


# Copied once per device (and setting): a host-to-device copy on every call would wait for the queued GPU work.
@functools.lru_cache(maxsize=None)
def _device_table(device: torch.device, max_translate: float) -> tuple[Tensor, Tensor]:
    return tuple(t.to(device) for t in magnitude_table(max_translate=max_translate))


@functools.lru_cache(maxsize=None)
def device_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """(1, C, 1, 1) per-channel constant (a fill colour) on `device`, made once per value and device."""
    return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)


def draw_trivial_params(batch: int, device: torch.device,
                        max_translate: float = WIDE_TRANSLATE) -> tuple[Tensor, Tensor]:
    """Per sample an op id (B,) uniform over OPS and its signed magnitude (B,) float64, uniform over the bins."""
    table, signed = _device_table(torch.device(device), float(max_translate))
    op = torch.randint(len(OPS), (batch,), device=device)
    magnitude = table[op, torch.randint(NUM_BINS, (batch,), device=device)]
    negate = signed[op] & (torch.randint(2, (batch,), device=device) == 1)
    return op, torch.where(negate, -magnitude, magnitude)


def trivial_augment(x: Tensor, fill: float | Sequence[float] = 0.0, max_translate: float = WIDE_TRANSLATE) -> Tensor:
    """TrivialAugment-wide on uint8 (B, C, H, W) images, one op and magnitude drawn per sample.

    fill: the geometric ops' fill in uint8 levels, one value or one per channel; max_translate: pixels at
    the top bin (the defaults are the authors' CIFAR settings: see the module docstring).
    """
    op, magnitude = draw_trivial_params(x.shape[0], x.device, max_translate)
    return apply_trivial_ops(x, op, magnitude, fill)


def _drew(op: Tensor, names: tuple[str, ...]) -> Tensor:
    """(B, 1, 1, 1) mask of the samples whose op is one of `names`."""
    return functools.reduce(operator.or_, (op == _ID[name] for name in names)).view(-1, 1, 1, 1)


def apply_trivial_ops(x: Tensor, op: Tensor, magnitude: Tensor, fill: float | Sequence[float] = 0.0) -> Tensor:
    """Apply to each uint8 image the op `OPS[op[i]]` at the signed `magnitude[i]` (torchvision's values),
    the geometric ops filling with `fill` (uint8 levels; torchvision's `fill` argument).

    Each family runs on the whole batch (cheaper than one pass per op: all five geometric ops share one
    grid_sample, the four blends one blend); a sample keeps only its own op's result.
    """
    if x.dtype != torch.uint8:  # posterize and equalize are defined on 8-bit levels
        raise TypeError(f"apply_trivial_ops expects uint8 images, got {x.dtype}")
    families = (
        (_GEOMETRIC, lambda: geometric_ops(x, op, magnitude, fill)),
        (_BLENDS, lambda: blend_ops(x, op, magnitude)),
        (("Posterize",), lambda: posterize(x, magnitude.to(torch.int64))),
        (("Solarize",), lambda: solarize(x, magnitude)),
        (("AutoContrast",), lambda: autocontrast(x)),
        (("Equalize",), lambda: equalize(x)),
    )
    out = x
    for names, family in families:
        out = torch.where(_drew(op, names), family(), out)
    return out


# -------------------------------------------------------------------------------------- geometry


def _inverse_affine(op: Tensor, magnitude: Tensor, h: int, w: int) -> Tensor:
    """(B, 2, 3) output->input maps in pixels about the image centre: torchvision's inverse matrices.

    ShearX/Y shear about the top-left corner (torchvision passes center=[0, 0], as the official
    AutoAugment does), hence the m*h/2 and m*w/2 offsets; TranslateX/Y move by int(m) pixels; Rotate turns
    by m degrees counter-clockwise about the centre. Other samples get the identity. float64, as
    torchvision computes its matrix in Python floats before casting to float32.
    """
    m = magnitude.to(torch.float64)
    zero = torch.zeros_like(m)
    shear_x, shear_y = op == _ID["ShearX"], op == _ID["ShearY"]
    angle = torch.where(op == _ID["Rotate"], m, zero).deg2rad()
    cos, sin = angle.cos(), angle.sin()
    shift_x = torch.where(op == _ID["TranslateX"], m.trunc(), zero)
    shift_y = torch.where(op == _ID["TranslateY"], m.trunc(), zero)
    row_x = (cos, torch.where(shear_x, m, -sin), torch.where(shear_x, m * h / 2, -shift_x))
    row_y = (torch.where(shear_y, m, sin), cos, torch.where(shear_y, m * w / 2, -shift_y))
    return torch.stack((torch.stack(row_x, -1), torch.stack(row_y, -1)), 1)


def _sampling_grid(theta: Tensor, h: int, w: int) -> Tensor:
    """torchvision's `_gen_affine_grid`, batched: pixel centres mapped by theta, normalized for grid_sample."""
    d = 0.5
    xs = torch.linspace(-w * 0.5 + d, w * 0.5 + d - 1, steps=w, device=theta.device)
    ys = torch.linspace(-h * 0.5 + d, h * 0.5 + d - 1, steps=h, device=theta.device)
    base = torch.stack((xs.expand(h, w), ys.view(h, 1).expand(h, w), torch.ones(h, w, device=theta.device)), -1)
    t = theta.transpose(1, 2)  # (B, 3, 2)
    rescaled = torch.stack((t[..., 0] / (0.5 * w), t[..., 1] / (0.5 * h)), -1)
    return base.view(1, h * w, 3).expand(theta.shape[0], -1, -1).bmm(rescaled).view(-1, h, w, 2)


def fill_levels(fill: float | Sequence[float], channels: int) -> tuple[float, ...]:
    """A fill given as one value or one per channel, as one float per channel."""
    values = (float(fill),) * channels if isinstance(fill, (int, float)) else tuple(float(f) for f in fill)
    if len(values) != channels:
        raise ValueError(f"fill {fill} needs one value or {channels} (one per channel)")
    return values


def warp_nearest(x: Tensor, theta: Tensor, fill: float | Sequence[float] = 0.0) -> Tensor:
    """Warp uint8 images by per-sample inverse maps theta (B, 2, 3): nearest, `fill` where no input pixel lands.

    As torchvision's `_apply_grid_transform`: a channel of ones is warped along and marks the pixels that
    came from inside the image (nearest: >= 0.5); the others take the fill, rounded to uint8 at the end.
    """
    b, c, h, w = x.shape
    grid = _sampling_grid(theta.to(torch.float32), h, w)
    ones = torch.ones(b, 1, h, w, device=x.device)
    warped = F.grid_sample(torch.cat((x.to(torch.float32), ones), 1), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)
    colour = device_constant(fill_levels(fill, c), x.device, torch.float32)
    filled = torch.where(warped[:, c:] < 0.5, colour, warped[:, :c])
    return filled.round().to(torch.uint8)


def geometric_ops(x: Tensor, op: Tensor, magnitude: Tensor, fill: float | Sequence[float] = 0.0) -> Tensor:
    """ShearX/Y, TranslateX/Y and Rotate, each sample by its own op and magnitude, in one grid_sample."""
    return warp_nearest(x, _inverse_affine(op, magnitude, *x.shape[-2:]), fill)


# ---------------------------------------------------------------------------------------- colour


def grayscale(x: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) -> uint8 (B, 1, H, W) luma, truncated: torchvision's `rgb_to_grayscale`."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(torch.uint8).unsqueeze(1)


def _blurred(x: Tensor) -> Tensor:
    """torchvision's sharpness reference: a 3x3 smoothing (centre weight 5) inside, the border untouched."""
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    smooth = F.conv2d(x.to(torch.float32), kernel, groups=x.shape[1]).round().to(torch.uint8)
    out = x.clone()
    out[..., 1:-1, 1:-1] = smooth
    return out


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """torchvision's `_blend` on uint8 with a per-sample factor (B,): factor*x + (1-factor)*other, truncated.

    Both weights come from float64 before the float32 cast, as torchvision's Python floats do.
    """
    factor = factor.to(torch.float64).view(-1, 1, 1, 1)
    mixed = factor.to(torch.float32) * x + (1 - factor).to(torch.float32) * other
    return mixed.clamp(0, 255).to(torch.uint8)


def blend_ops(x: Tensor, op: Tensor, magnitude: Tensor) -> Tensor:
    """Brightness, Color, Contrast and Sharpness: one blend at factor 1 + m with each op's own reference
    image (black, grayscale, mean grayscale, blurred), as torchvision's adjust_* functions."""
    gray = grayscale(x)
    other = torch.where(_drew(op, ("Brightness",)), 0.0,
                        torch.where(_drew(op, ("Color",)), gray.to(torch.float32),
                                    torch.where(_drew(op, ("Contrast",)),
                                                gray.to(torch.float32).mean((-3, -2, -1), keepdim=True),
                                                _blurred(x).to(torch.float32))))
    return blend(x, other, 1 + magnitude.to(torch.float64))


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits` (B,) bits of each uint8 value (torchvision's `posterize`)."""
    # Clamped: the other samples' magnitudes reach here as well, and their results are dropped.
    shift = (8 - bits).clamp(0, 8).view(-1, 1, 1, 1)
    return x & ((255 >> shift) << shift).to(torch.uint8)


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert the uint8 values at or above the per-sample `threshold` (B,) (torchvision's `solarize`)."""
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 255 - x, x)


def autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel of each image to [0, 255]; flat channels stay (torchvision's `autocontrast`)."""
    low = x.amin((-2, -1), keepdim=True).to(torch.float32)
    high = x.amax((-2, -1), keepdim=True).to(torch.float32)
    flat = high == low
    scale = torch.where(flat, 1.0, 255 / (high - low))
    return ((x - torch.where(flat, 0.0, low)) * scale).clamp(0, 255).to(torch.uint8)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalization per image and channel, torchvision's `equalize` semantics, batched.

    One scatter_add over (image, channel) rows builds all 256-bin histograms. The LUT step is the pixel
    count outside the highest occupied bin // 255; a row with step 0 is returned unchanged.
    """
    b, c, h, w = x.shape
    rows = x.reshape(b * c, h * w).to(torch.int64)
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device).scatter_add_(1, rows, torch.ones_like(rows))
    step = (h * w - hist.gather(1, rows.amax(1, keepdim=True))) // 255
    lut = (hist.cumsum(1) + step // 2) // step.clamp(min=1)
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)  # shifted: value v maps to the count below v
    equalized = torch.where(step == 0, rows, lut.gather(1, rows))
    return equalized.to(torch.uint8).view(b, c, h, w)
