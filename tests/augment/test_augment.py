"""Batched augmentation and preprocessing (distill.augment.ops), on the CPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path
from typing import Callable

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.autoaugment import TrivialAugmentWide, _apply_op

from distill.augment.ops import (AugmentConfig, GpuAugment, Preprocess, centred_boxes, color_jitter, cutout,
                             erasing_boxes, jitter_factors, mix, parse_augment, random_crop, to_float)
from distill.augment.trivial import (NUM_BINS, OPS, WIDE_TRANSLATE, apply_trivial_ops, draw_trivial_params,
                                    magnitude_table, trivial_augment)
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
VALID_KEYS = ("crop_padding, flip, policy, policy_translate, color_jitter, cutout, cutout_size, mixup, cutmix, "
              "mix_prob, fill")


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


@pytest.mark.parametrize("mix_fields", [{"mixup": 1.0}, {"cutmix": 1.0},
                                        {"mixup": 1.0, "cutmix": 1.0, "mix_prob": 0.5}])
def test_mix_targets_match_pixel_means(mix_fields: dict):
    x, y = _class_constant_batch()
    x, y = x.repeat(3, 1, 1, 1), y.repeat(3)  # 30 samples: each kind (and unmixed ones) in one batch
    cfg = dataclasses.replace(AugmentConfig.none(), **mix_fields)
    out, targets = _run(cfg, x, y)
    torch.testing.assert_close(targets.sum(1), torch.ones(len(y)))
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


def test_mixup_and_cutmix_both_on_picks_each_per_sample():
    # Semantics changed: the choice was one per batch (drawn on the CPU); now each sample picks its own.
    x, y = _class_constant_batch()
    x, y = x.repeat(4, 1, 1, 1), y.repeat(4)
    out, targets = _run(dataclasses.replace(AugmentConfig.none(), mixup=1.0, cutmix=1.0), x, y)
    steps = out * 255 / 10  # CutMix keeps every pixel a class value (a multiple of 10); MixUp blends
    pasted = torch.isclose(steps, steps.round(), atol=1e-3).flatten(1).all(1)
    assert pasted.any() and not pasted.all()  # both kinds in one batch


@pytest.mark.parametrize("cutout_size", [0, 16])  # random erasing, DeVries' Cutout
def test_cutout_and_erasing_fill_with_the_given_mean(cutout_size: int):
    # Semantics changed: the box was 0 (black) in [0, 1] space; DeVries zeroes it after normalization.
    x, y = _images(), _labels()
    mean = torch.tensor([0.1, 0.3, 0.7])
    cfg = dataclasses.replace(AugmentConfig.none(), cutout=1.0, cutout_size=cutout_size)
    for given, fill in ((mean.tolist(), mean), (None, torch.full((3,), 0.5))):  # default: mid grey
        torch.manual_seed(0)
        out, _ = GpuAugment(cfg, NUM_CLASSES, mean=given)(x, y)
        erased = (out != x / 255).any(1)  # (B, H, W): pixels the box changed
        assert erased.flatten(1).any(1).all()  # a box in every image (p=1)
        assert torch.equal(out.permute(0, 2, 3, 1)[erased], fill.expand(int(erased.sum()), 3))
    torch.manual_seed(0)
    black, _ = GpuAugment(dataclasses.replace(cfg, fill="black"), NUM_CLASSES, mean=mean.tolist())(x, y)
    assert torch.equal(black.permute(0, 2, 3, 1)[erased], torch.zeros(int(erased.sum()), 3))


def test_gpu_augment_rejects_a_mean_outside_0_1():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        GpuAugment(AugmentConfig(), NUM_CLASSES, mean=[125.0, 122.0, 113.0])  # uint8 levels, not [0, 1]


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
    # Key list changed: the new fields sit in pipeline order.
    with pytest.raises(UserError, match=VALID_KEYS):
        parse_augment(spec)


# ------------------------------------------------------------------------- helpers for the new ops


def _ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.double().sort().values, b.double().sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b, grid, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


def _ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def _max_ks(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Largest KS statistic over the feature columns of two (N, F) samples."""
    return max(_ks_statistic(a, b) for a, b in zip(features_a.T, features_b.T))


def _copies(n: int, size: int = 16, seed: int = 7) -> torch.Tensor:
    """n copies of one random uint8 image without zeros: every difference between outputs is the op's."""
    return _images(1, size, seed).expand(n, -1, -1, -1).contiguous()


def _distinct(out: torch.Tensor) -> int:
    return len({o.numpy().tobytes() for o in out})


# ------------------------------------------------------------------------------- crop: full range


@pytest.mark.parametrize("p", [2, 4])
def test_crop_offsets_cover_the_full_range(p: int):
    # A 16x16 image whose pixel values are its row (channel 0) and column (channel 1): output pixel
    # (p, p) is input pixel (dy, dx), so it reads the offsets back. Every value in 0..2p must appear.
    rows = torch.arange(16, dtype=torch.uint8).view(16, 1).expand(16, 16)
    coded = torch.stack([rows, rows.T, rows]).expand(600, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    out = random_crop(coded, p)
    dy, dx = out[:, 0, p, p].long(), out[:, 1, p, p].long()
    assert set(dy.tolist()) == set(range(2 * p + 1)) and set(dx.tolist()) == set(range(2 * p + 1))


# ---------------------------------------------------------------------------- TrivialAugment-wide


def test_magnitude_table_is_torchvisions():
    table, signed = magnitude_table()
    space = TrivialAugmentWide()._augmentation_space(NUM_BINS)
    assert list(space) == list(OPS)
    for row, is_signed, (magnitudes, tv_signed) in zip(table, signed, space.values()):
        assert bool(is_signed) == tv_signed
        expected = magnitudes.double() if magnitudes.ndim else torch.zeros(NUM_BINS, dtype=torch.float64)
        assert torch.equal(row, expected)
    # Another top translation changes the two translate rows only, to the same 31 even steps.
    narrow, _ = magnitude_table(max_translate=10.0)
    translate = [OPS.index("TranslateX"), OPS.index("TranslateY")]
    others = [i for i in range(len(OPS)) if i not in translate]
    assert torch.equal(narrow[others], table[others])
    expected = torch.linspace(0.0, 10.0, NUM_BINS).double()
    assert torch.equal(narrow[translate], expected.expand(2, -1))


def _op_test_images() -> torch.Tensor:
    x = _images(4, 16, seed=11)
    x[1] = x[1] // 4 + 60  # a narrow range, for autocontrast and equalize
    x[2, 0] = 7  # a flat channel: autocontrast and equalize leave it
    x[3, :, :, :8] = 200  # a large flat area: a peaked histogram
    return x


# torchvision's TrivialAugmentWide passes its `fill` to _apply_op as one float per channel (None: zeros).
@pytest.mark.parametrize("fill", [None, [128.0, 64.0, 200.0]], ids=["torchvision-default", "fill"])
@pytest.mark.parametrize("name", OPS)
def test_trivial_op_matches_torchvision_at_every_magnitude(name: str, fill: list[float] | None):
    x = _op_test_images()
    table, signed = magnitude_table()
    index = OPS.index(name)
    signs = (1.0, -1.0) if signed[index] else (1.0,)
    for magnitude in sorted({float(m) * s for m in table[index] for s in signs}):
        ours = apply_trivial_ops(x, torch.full((4,), index), torch.full((4,), magnitude, dtype=torch.float64),
                                 fill=0.0 if fill is None else fill)
        reference = torch.stack([_apply_op(img, name, magnitude, InterpolationMode.NEAREST, fill) for img in x])
        assert ours.dtype == torch.uint8
        difference = (ours.int() - reference.int()).abs().max()
        assert difference <= 1, f"{name} at {magnitude}: off by {difference}"  # uint8 rounding at most


def test_trivial_draws_cover_every_op_and_magnitude_bin():
    torch.manual_seed(0)
    n = 40_000
    op, magnitude = draw_trivial_params(n, torch.device("cpu"))
    table, signed = magnitude_table()
    counts = torch.bincount(op, minlength=len(OPS)).double()
    assert (counts - n / len(OPS)).abs().max() < 5 * math.sqrt(n / len(OPS))  # uniform over the ops
    for index in range(len(OPS)):
        drawn = set(magnitude[op == index].tolist())
        expected = set(table[index].tolist()) | ({-m for m in table[index].tolist()} if signed[index] else set())
        assert drawn == expected, OPS[index]  # both ends of every range, and both signs


def _top_shift(max_translate: float) -> torch.Tensor:
    """TranslateX at the top bin of `max_translate` on a 32x32 image with values 1..255, fill (10, 20, 30)."""
    x = _images(1, 32, seed=3)
    top = magnitude_table(max_translate=max_translate)[0][OPS.index("TranslateX"), -1]
    return x, apply_trivial_ops(x, torch.tensor([OPS.index("TranslateX")]), top.view(1), fill=(10, 20, 30))


def test_translate_top_bin_keeps_most_of_the_image_at_10_px_and_blanks_it_at_32():
    fill = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    x, shifted = _top_shift(10.0)  # the strong preset's range: 10 columns of fill, 22 of the image
    assert torch.equal(shifted[..., :10], fill.expand(1, 3, 32, 10))
    assert torch.equal(shifted[..., 10:], x[..., :22])
    _, blank = _top_shift(WIDE_TRANSLATE)  # the wide space's 32 px moves a 32x32 image out entirely
    assert torch.equal(blank, fill.expand(1, 3, 32, 32))
    assert parse_augment("strong").policy_translate == 10.0 and AugmentConfig().policy_translate == WIDE_TRANSLATE


def test_trivial_draws_use_the_translate_range():
    torch.manual_seed(0)
    op, magnitude = draw_trivial_params(20_000, torch.device("cpu"), max_translate=10.0)
    shifts = magnitude[(op == OPS.index("TranslateX")) | (op == OPS.index("TranslateY"))]
    assert shifts.abs().max() == 10.0 and shifts.min() == -10.0


def test_trivial_rejects_float_images():
    with pytest.raises(TypeError):
        trivial_augment(torch.rand(2, 3, 8, 8))


# ------------------------------------------------------------------------------- colour jitter


def test_jitter_factors_span_kornias_ranges():
    torch.manual_seed(0)
    s = 0.4
    factors = jitter_factors(s, 20_000, torch.device("cpu"))
    for row, (low, high) in zip(factors, [(1 - s, 1 + s)] * 3 + [(-s / 4, s / 4)]):
        assert low <= row.min() < low + 0.01 and high - 0.01 < row.max() <= high
    assert not torch.equal(factors[0], factors[1])  # independent draws per factor
    assert jitter_factors(1.5, 1000, torch.device("cpu"))[:3].min() >= 0  # kornia floors the range at 0


def _colour_features(x: torch.Tensor) -> torch.Tensor:
    """Per image: channel means, overall std, and the mean channel spread (a saturation proxy)."""
    spread = (x.amax(1) - x.amin(1)).mean((1, 2))
    return torch.cat([x.mean((2, 3)), x.std((1, 2, 3)).unsqueeze(1), spread.unsqueeze(1)], 1)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)])
def test_color_jitter_matches_kornias_distribution(order: tuple[int, ...]):
    # Given the order (kornia draws one per call), samples are i.i.d., so a KS test per feature applies.
    n, s = 3000, 0.4
    tint = torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)  # a strongly coloured image: a hue shift shows
    x = to_float(_copies(n, size=8)) * tint
    torch.manual_seed(0)
    ours = _colour_features(color_jitter(x, s, order=list(order)))
    kornia_out = K.ColorJitter(s, s, s, s / 4, p=1.0, order=order)(x)
    critical = _ks_critical(n, n)
    assert _max_ks(ours, _colour_features(kornia_out)) < critical
    # The test has teeth: a hue range twice as wide, or brightness s / 2, is told apart.
    for wrong in (K.ColorJitter(s, s, s, s / 2, p=1.0, order=order),
                  K.ColorJitter(s / 2, s, s, s / 4, p=1.0, order=order)):
        assert _max_ks(ours, _colour_features(wrong(x))) > critical


# ------------------------------------------------------------------------------ erasing, cutout


def _erased_box_features(out: torch.Tensor) -> torch.Tensor:
    """Per image (no zero pixels before erasing): erased fraction, box height, width, top, left."""
    erased = (out == 0).all(1)  # (N, H, W)
    rows, cols = erased.any(2), erased.any(1)
    index = torch.arange(out.shape[-1])
    top = torch.where(rows, index, 999).amin(1)
    left = torch.where(cols, index, 999).amin(1)
    return torch.stack([erased.float().mean((1, 2)), rows.sum(1).float(), cols.sum(1).float(),
                        top.float(), left.float()], 1)


def test_erasing_matches_kornias_distribution():
    n = 4000
    x = to_float(_copies(n, size=32))
    torch.manual_seed(0)
    ours = _erased_box_features(cutout(x, 1.0))
    critical = _ks_critical(n, n)
    assert _max_ks(ours, _erased_box_features(K.RandomErasing(p=1.0)(x))) < critical
    # Teeth: a slightly larger area range or a square-only aspect is told apart.
    for wrong in (K.RandomErasing(scale=(0.02, 0.4), p=1.0), K.RandomErasing(ratio=(0.9, 1.1), p=1.0)):
        assert _max_ks(ours, _erased_box_features(wrong(x))) > critical


def test_erasing_probability_and_boxes_reach_every_border():
    n, p = 4000, 0.3
    x = to_float(_copies(n, size=32))
    torch.manual_seed(0)
    erased = (cutout(x, p) == 0).flatten(1).any(1).double().mean()
    assert abs(erased - p) < 4 * math.sqrt(p * (1 - p) / n)
    y0, y1, x0, x1 = erasing_boxes(20_000, 32, 32, torch.device("cpu"))
    assert y0.min() == 0 and x0.min() == 0 and y1.max() == 32 and x1.max() == 32
    heights = y1 - y0
    assert heights.min() <= 3 and heights.max() == 32  # from about sqrt(0.02 * 1024 * 0.3) up to the clamp


def test_erasing_boxes_shorter_than_the_image_reach_the_last_row_and_column():
    # Full-height boxes end at the border whatever their start; only shorter ones show the start range
    # 0..H-h inclusive. A range one pixel short (rand * (H - h)) would never erase the last row or column.
    torch.manual_seed(0)
    y0, y1, x0, x1 = erasing_boxes(20_000, 32, 32, torch.device("cpu"))
    for start, end in ((y0, y1), (x0, x1)):
        short = (end - start) < 32
        assert short.sum() > 19_000 and (end[short] == 32).any()
        for side in (4, 8, 16, 24):
            drawn = start[(end - start) == side]
            assert len(drawn) > 200 and drawn.min() == 0 and drawn.max() == 32 - side


def test_cutout_square_is_clipped_and_covers_every_centre():
    torch.manual_seed(0)
    half = torch.full((5000,), 8)
    y0, y1, x0, x1 = centred_boxes(half, half, 32, 32)
    assert set(y0.tolist()) == set(range(0, 24)) and set(y1.tolist()) == set(range(8, 33))
    assert set(x0.tolist()) == set(range(0, 24)) and set(x1.tolist()) == set(range(8, 33))
    out = cutout(to_float(_copies(500, size=32)), 1.0, size=16)
    features = _erased_box_features(out)
    heights, widths = features[:, 1], features[:, 2]
    assert heights.max() == 16 and widths.max() == 16 and heights.min() == 8 and widths.min() == 8
    torch.testing.assert_close(features[:, 0], heights * widths / 1024)  # one rectangle per image


# ------------------------------------------------------------------ every op: per sample, seeded


# Each op on 64 copies of one image: every difference between outputs comes from a per-sample draw.
_PER_SAMPLE_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "trivial (uint8)": trivial_augment,
    "color_jitter": lambda x: color_jitter(to_float(x), 0.8),
    "erasing": lambda x: cutout(to_float(x), 1.0),
    "cutout 16x16": lambda x: cutout(to_float(x), 1.0, size=16),
    "strong pipeline": lambda x: GpuAugment(parse_augment("strong"), NUM_CLASSES)(x, _labels(len(x)))[0],
}


@pytest.mark.parametrize("name", _PER_SAMPLE_OPS)
def test_op_is_per_sample_seeded_and_in_range(name: str):
    op, x = _PER_SAMPLE_OPS[name], _copies(64, size=32)
    outputs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outputs.append(op(x))
    a, b, c = outputs
    assert torch.equal(a, b) and not torch.equal(a, c)  # same seed same output, another seed another
    assert a.shape == x.shape
    if name.startswith("trivial"):
        assert a.dtype == torch.uint8  # its bounds hold by type
    else:
        assert a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert _distinct(a) > 40  # kornia's TrivialAugment gives one op to the whole batch: often 1 output


# ---------------------------------------------------------------------------------------- mixing


def test_mix_prob_leaves_the_other_samples_untouched():
    x, y = _class_constant_batch()
    x, y = to_float(x.repeat(40, 1, 1, 1)), y.repeat(40)
    onehot = F.one_hot(y, NUM_CLASSES).float()
    torch.manual_seed(0)
    out, targets = mix(x, onehot, mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.5)
    kept = (targets == onehot).all(1)
    assert torch.equal(out[kept], x[kept])
    n = len(y)
    assert abs((~kept).double().mean() - 0.5) < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_mix_is_per_sample_and_seeded(kind: str):
    alphas = {"mixup": (1.0, 0.0), "cutmix": (0.0, 1.0), "both": (1.0, 1.0)}[kind]
    x, y = _class_constant_batch()
    onehot = F.one_hot(y, NUM_CLASSES).float()
    results = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        results.append(mix(to_float(x), onehot, *alphas, prob=1.0))
    assert torch.equal(results[0][0], results[1][0]) and not torch.equal(results[0][0], results[2][0])
    own = results[0][1][torch.arange(NUM_CLASSES), y]
    assert len(set(own.tolist())) > NUM_CLASSES // 2  # one lam per sample
    assert 0 <= results[0][0].min() and results[0][0].max() <= 1


def test_cutout_comes_after_mixing_one_whole_box_per_image():
    # Class-constant images have three equal channels, the fill (0.2, 0.5, 0.8) does not: a pixel whose
    # channels differ holds some fill. Cutout after mixing leaves exactly the fill there (no MixUp blend of
    # a partner's box) in one rectangle of at most 16x16 per image (no partner's box pasted by CutMix).
    x, y = _class_constant_batch()
    x, y = x.repeat(6, 1, 1, 1), y.repeat(6)
    cfg = dataclasses.replace(AugmentConfig.none(), cutout=1.0, cutout_size=16, mixup=1.0, cutmix=1.0)
    torch.manual_seed(0)
    out, targets = GpuAugment(cfg, NUM_CLASSES, mean=[0.2, 0.5, 0.8])(x, y)
    touched = (out.amax(1) - out.amin(1)) > 1e-6
    exact = (out == torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)).all(1)
    assert torch.equal(touched, exact)
    rows, cols = exact.any(2).sum(1), exact.any(1).sum(1)
    assert torch.equal(exact.sum((1, 2)), rows * cols) and rows.max() == 16 and cols.max() == 16  # rectangles
    assert (targets.max(1).values < 1).double().mean() > 0.9  # mix_prob 1: (nearly) all were mixed


# ---------------------------------------------------------------------------------------- preset


def test_strong_preset_and_its_overrides():
    strong = parse_augment("strong")
    assert strong == AugmentConfig.strong()
    assert (strong.crop_padding, strong.flip, strong.policy) == (4, True, "trivial")
    assert (strong.cutout, strong.cutout_size, strong.cutmix, strong.mixup, strong.mix_prob) == (1.0, 16, 1.0, 0.2, 0.5)
    assert (strong.policy_translate, strong.fill) == (10.0, "mean")
    assert parse_augment("strong,fill=black,policy_translate=32") == dataclasses.replace(
        strong, fill="black", policy_translate=32.0)
    assert parse_augment("strong,mixup=0") == dataclasses.replace(strong, mixup=0.0)
    assert parse_augment("strong, policy=none, mix_prob=1") == dataclasses.replace(strong, policy="none", mix_prob=1.0)
    default = AugmentConfig()  # default and none stay crop+flip and nothing
    assert (default.policy, default.cutout, default.mixup, default.cutmix, default.color_jitter) == ("none", 0, 0, 0, 0)
    assert parse_augment("none") == dataclasses.replace(default, crop_padding=0, flip=False)


@pytest.mark.parametrize("spec, message", [("policy=foo", "expected one of none, trivial"),
                                           ("mix_prob=1.5", r"mix_prob=1.5 is out of range: expected a value "
                                                            r"in \[0.0, 1.0\]"),
                                           ("cutout_size=-1", "cutout_size=-1 is out of range"),
                                           ("cutout_size=8.5", "cutout_size expects type int"),
                                           ("fill=grey", "fill='grey' is not valid: expected one of mean, black"),
                                           ("policy_translate=-1", "policy_translate=-1.0 is out of range")])
def test_new_fields_are_validated(spec: str, message: str):
    with pytest.raises(UserError, match=message):
        parse_augment(spec)


def test_strong_pipeline_targets_and_mix_rate():
    x, y = _copies(256, size=32), _labels(256)
    out, targets = _run(parse_augment("strong"), x, y, seed=5)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(targets.sum(1), torch.ones(256))
    mixed = (targets.max(1).values < 1).double().mean()  # mix_prob 0.5 (a CutMix box can be empty: a bit less)
    assert abs(mixed - 0.5) < 4 * math.sqrt(0.25 / 256)


def test_no_op_reads_device_values_back(monkeypatch):
    # Meta tensors hold no data: an .item(), .tolist(), nonzero or boolean index (each a host sync on
    # CUDA) raises here. Beta sampling has no meta kernel, so the mixes get a constant lam for this run.
    import distill.augment.ops as augment
    monkeypatch.setattr(augment, "_sample_beta", lambda alpha, n, device: torch.full((n,), 0.5, device=device))
    x = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta")
    y = torch.empty(8, dtype=torch.int64, device="meta")
    out, targets = GpuAugment(dataclasses.replace(parse_augment("strong"), color_jitter=0.4), NUM_CLASSES)(x, y)
    assert out.device.type == "meta" and out.shape == x.shape and targets.shape == (8, NUM_CLASSES)


# -------------------------------------------------------------------- bench/augment_cost.py --blank


def _augment_cost():
    path = Path(__file__).resolve().parents[2] / "bench" / "augment_cost.py"
    spec = importlib.util.spec_from_file_location("augment_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fill_shares_and_summary_by_hand():
    bench = _augment_cost()
    fill, other = (0.2, 0.2, 0.2), (1.0, 1.0, 1.0)
    a, b = torch.full((2, 3, 2, 2), 0.6), torch.full((2, 3, 2, 2), 0.6)
    a[0, :, 0, 0], b[0, :, 0, 0] = 0.2, 1.0  # image 0: one pixel of fill ...
    a[0, :, 0, 1], b[0, :, 0, 1] = 0.5 * 0.2 + 0.5 * 0.6, 0.5 * 1.0 + 0.5 * 0.6  # ... one half-blended with it
    a[0, :, 1, 1] = b[0, :, 1, 1] = 0.0  # ... and a black pixel of its own: black, not blank
    a[1], b[1] = 0.2, 1.0  # image 1: all fill
    shares = bench.fill_shares(a, b, fill, other)
    torch.testing.assert_close(shares[0], torch.tensor([[1.0, 0.5], [0.0, 0.0]]))
    summary = bench.blank_summary(shares, (a == 0).all(1))
    assert summary["blank_pixels"] == pytest.approx((1.5 + 4) / 8)  # 0.6875
    assert summary["half_blank_images"] == 0.5  # image 0 is 3/8 blank, image 1 all
    assert summary["black_pixels"] == pytest.approx(1 / 8) and summary["half_black_images"] == 0.0


def test_blank_statistics_of_pipelines_with_known_answers():
    bench = _augment_cost()
    x, y = _images(8, 32), _labels(8)
    mean = [0.25, 0.5, 0.75]
    # A 64x64 Cutout square clipped to a 32x32 image erases all of it, wherever its centre.
    full = bench.blank_statistics("none,cutout=1,cutout_size=64", x, y, mean)
    assert full == {"blank_pixels": 1.0, "half_blank_images": 1.0, "black_pixels": 0.0, "half_black_images": 0.0}
    black = bench.blank_statistics("none,cutout=1,cutout_size=64,fill=black", x, y, mean)
    assert black["blank_pixels"] == 1.0 and black["black_pixels"] == 1.0
    assert bench.blank_statistics("default", x, y, mean)["blank_pixels"] == 0.0  # reflect padding: no fill


def test_blank_mode_prints_json_per_preset(capsys):
    _augment_cost().main(["--blank", "--images", "32", "--batch", "16", "--augment", "strong", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 32 and report["data"].startswith("synthetic")
    assert 0.05 < report["presets"]["strong"]["blank_pixels"] < 0.6  # Cutout 16 alone is ~18%
