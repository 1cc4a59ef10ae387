"""Cost of each augmentation op per batch, next to one teacher training step; with --blank, how much of
each preset's output is erased or blank instead.

    python bench/augment_cost.py                       # CPU, teacher step timed at batch 32, scaled to 512
    python bench/augment_cost.py --device cuda --json  # GPU, teacher step at batch 512, JSON on stdout
    python bench/augment_cost.py --blank --data cifar10-jpeg.tar.gz --augment none --augment strong

Each op runs on a batch of `--batch` 32x32 images; the time is the median of `--reps` runs after
`--warmup` runs, with the device synchronized around each run. The reference is one SGD step of a
torchvision ResNet50 with a CIFAR stem (3x3 stride-1 conv1, no max-pool, 10 classes); on CUDA it
runs in bf16 autocast with channels_last (how teachers train), on the CPU in float32. Where
`--teacher-batch` is smaller than `--batch` the step time is scaled linearly to `--batch`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import kornia
import kornia.augmentation as K
import torch
import torchvision
from torch import nn

from distill.augment import trivial as TA
from distill.augment.ops import (AugmentConfig, GpuAugment, Preprocess, color_jitter, cutmix, cutout, mix, mixup,
                             parse_augment, random_crop, random_flip, to_float)
from distill.data import channel_stats, load_dataset

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def timed(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median seconds of fn() over `reps` runs after `warmup` runs."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def augment_ops(batch: int, device: torch.device) -> dict[str, Callable[[], object]]:
    """The ops to time, each on a fresh-looking batch of `batch` 32x32 images on `device`."""
    x8 = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    xf = to_float(x8)
    onehot = torch.nn.functional.one_hot(torch.arange(batch, device=device) % 10, 10).float()
    y = torch.arange(batch, device=device) % 10
    jitter, erase = K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0), K.RandomErasing(p=0.5)
    kornia_crop = K.RandomCrop((32, 32), padding=4, padding_mode="reflect")
    kornia_trivial = K.auto.TrivialAugment()
    normalize = Preprocess(CIFAR_MEAN, CIFAR_STD).to(device)
    upsize = Preprocess(CIFAR_MEAN, CIFAR_STD, image_size=64).to(device)
    pipelines = {name: GpuAugment(cfg, 10, CIFAR_MEAN) for name, cfg in (
        ("pipeline default (crop+flip)", AugmentConfig()),
        ("pipeline all on", AugmentConfig(color_jitter=0.4, cutout=0.5, mixup=0.2, cutmix=1.0)),
        ("pipeline strong", parse_augment("strong")))}
    op, magnitude = TA.draw_trivial_params(batch, device)  # each TrivialAugment family runs on the whole batch
    ops: dict[str, Callable[[], object]] = {
        "to_float (uint8 -> [0,1])": lambda: to_float(x8),
        "crop p=4 (ours, uint8)": lambda: random_crop(x8, 4),
        "crop p=4 (ours, float32)": lambda: random_crop(xf, 4),
        "crop p=4 (kornia RandomCrop)": lambda: kornia_crop(xf),
        "flip (uint8)": lambda: random_flip(x8),
        "TA geometric: 1 warp (uint8)": lambda: TA.geometric_ops(x8, op, magnitude),
        "TA colour blends (uint8)": lambda: TA.blend_ops(x8, op, magnitude),
        "TA posterize (uint8)": lambda: TA.posterize(x8, magnitude.to(torch.int64)),
        "TA solarize (uint8)": lambda: TA.solarize(x8, magnitude),
        "TA autocontrast (uint8)": lambda: TA.autocontrast(x8),
        "TA equalize (uint8)": lambda: TA.equalize(x8),
        "TrivialAugment (ours, uint8)": lambda: TA.trivial_augment(x8),
        "TrivialAugment (kornia, 1 op)": lambda: kornia_trivial(xf),
        "color jitter s=0.4 (ours)": lambda: color_jitter(xf, 0.4),
        "color jitter s=0.4 (kornia)": lambda: jitter(xf),
        "erasing p=0.5 (ours)": lambda: cutout(xf, 0.5),
        "erasing p=0.5 (kornia)": lambda: erase(xf),
        "cutout 16x16 p=1 (ours)": lambda: cutout(xf, 1.0, size=16),
        "mixup a=0.2": lambda: mixup(xf, onehot, 0.2),
        "cutmix a=1.0": lambda: cutmix(xf, onehot, 1.0),
        "mix p=0.5 (mixup 0.2|cutmix 1)": lambda: mix(xf, onehot, 0.2, 1.0, prob=0.5),
        "normalize": lambda: normalize(xf),
        "resize to 64 (bilinear)": lambda: upsize.resize(xf),
    }
    ops.update({name: (lambda aug=aug: aug(x8, y)) for name, aug in pipelines.items()})
    return ops


def cifar_resnet50() -> nn.Module:
    model = torchvision.models.resnet50(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def teacher_step_seconds(batch: int, device: torch.device, warmup: int, reps: int) -> float:
    """One SGD step (forward, loss, backward, update) of the CIFAR ResNet50 on `batch` images."""
    cuda = device.type == "cuda"
    model = cifar_resnet50().to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, device, warmup, reps)


# ----------------------------------------------------------------------------- --blank: fill shares


def fill_shares(out: torch.Tensor, out_other: torch.Tensor, fill: Sequence[float],
                fill_other: Sequence[float]) -> torch.Tensor:
    """(B, H, W): how much of each output pixel is fill, from two runs with the same draws but two fills.

    A pixel that is the fill differs between the runs by the fills' difference, a MixUp blend of it by its
    weight times that, any other pixel not at all: so this counts erased and uncovered pixels whatever
    their colour, and never a dark pixel of the image itself. Exact where nothing after the fill depends
    on it (every op but colour jitter, whose contrast step uses the image's mean).
    """
    gap = (torch.tensor(fill) - torch.tensor(fill_other)).abs().to(out.device, out.dtype)
    return ((out - out_other).abs() / gap.view(1, -1, 1, 1)).mean(1).clamp(0, 1)


def blank_summary(shares: torch.Tensor, black: torch.Tensor) -> dict[str, float]:
    """Share of pixels (B, H, W shares in [0, 1]) and of images at least half blank; the same for black."""
    return {"blank_pixels": float(shares.mean()),
            "half_blank_images": float((shares.mean((1, 2)) >= 0.5).double().mean()),
            "black_pixels": float(black.double().mean()),
            "half_black_images": float((black.double().mean((1, 2)) >= 0.5).double().mean())}


def blank_statistics(spec: str, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float],
                     seed: int = 0, batch: int = 512) -> dict[str, float]:
    """`blank_summary` of the --augment `spec` on uint8 `images`, with `mean` as the training mean.

    The spec runs as given (its black pixels count every exact 0 in all channels, the image's own included)
    and again with the same seed and a contrasting fill for `fill_shares`. `mean` is rounded to uint8
    levels so the policy's uint8 fill and the float cutout fill are the same colour.
    """
    cfg = parse_augment(spec)
    num_classes = int(labels.max()) + 1
    own = GpuAugment(cfg, num_classes, [round(255 * m) / 255 for m in mean])
    contrast = tuple(0.0 if f >= 0.5 else 1.0 for f in own.fill)  # at least 0.5 from the fill per channel
    other = GpuAugment(dataclasses.replace(cfg, fill="mean"), num_classes, contrast)
    shares, black = [], []
    for start in range(0, len(images), batch):
        x, y = images[start:start + batch], labels[start:start + batch]
        outputs = []
        for augment in (own, other):
            torch.manual_seed(seed + start)
            outputs.append(augment(x, y)[0])
        shares.append(fill_shares(*outputs, own.fill, other.fill))
        black.append((outputs[0] == 0).all(1))
    return blank_summary(torch.cat(shares), torch.cat(black))


def blank_images(data: str | None, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[float], str]:
    """The first `count` training images of `data` (decoded by distill.data) and the training set's mean,
    or, without data, uniform random uint8 images with labels 0..9 in turn."""
    if data is not None:
        ds = load_dataset(data, quiet=True)
        return ds.train_x[:count], ds.train_y[:count], channel_stats(ds.train_x)[0], str(ds.path)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.arange(count) % 10, channel_stats(images)[0], "synthetic (uniform random uint8)"


def blank_report(args: argparse.Namespace) -> dict:
    images, labels, mean, source = blank_images(args.data, args.images, args.seed)
    images, labels = images.to(args.device), labels.to(args.device)
    return {"date": datetime.date.today().isoformat(), "data": source, "images": len(images), "seed": args.seed,
            "mean": mean, "torch": torch.__version__,
            "presets": {spec: blank_statistics(spec, images, labels, mean, args.seed, args.batch)
                        for spec in args.augment or ["none", "default", "strong"]}}


def format_blank_table(report: dict) -> str:
    width = max(20, *(len(spec) for spec in report["presets"]))
    lines = [f"data {report['data']}, {report['images']} images, seed {report['seed']}, torch {report['torch']}",
             "",
             f"| {'--augment':<{width}} | erased/blank px | images >= 1/2 blank | black px | images >= 1/2 black |",
             f"|{'-' * (width + 2)}|----------------:|--------------------:|---------:|--------------------:|"]
    for spec, row in report["presets"].items():
        lines.append(f"| {spec:<{width}} | {100 * row['blank_pixels']:>14.2f}% "
                     f"| {100 * row['half_blank_images']:>18.2f}% | {100 * row['black_pixels']:>7.2f}% "
                     f"| {100 * row['half_black_images']:>18.2f}% |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, default=512, help="images per augmentation batch")
    parser.add_argument("--teacher-batch", type=int, default=None,
                        help="batch for the teacher step, scaled linearly to --batch (default: --batch on "
                             "cuda, 32 on cpu, where a step at 512 takes minutes)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=15, help="timed runs per op")
    parser.add_argument("--teacher-reps", type=int, default=3, help="timed teacher steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 suffers least on a shared machine")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    blank = parser.add_argument_group("--blank: erased or blank pixels per preset instead of timings")
    blank.add_argument("--blank", action="store_true", help="report the share of pixels that are fill "
                       "(erased or uncovered) and of images at least half so, per --augment spec")
    blank.add_argument("--augment", action="append", metavar="SPEC",
                       help="an --augment spec to measure, repeatable (default: none, default, strong)")
    blank.add_argument("--data", default=None, help="a dataset distill.data reads (e.g. the JPEG archive); "
                       "default: synthetic uniform random images")
    blank.add_argument("--images", type=int, default=10_000, help="training images to augment (default 10000)")
    blank.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.blank:
        report = blank_report(args)
        print(json.dumps(report, indent=2) if args.json else format_blank_table(report))
        return
    teacher_batch = args.teacher_batch or (args.batch if device.type == "cuda" else 32)
    load_before = os.getloadavg()[0]  # other work on the machine skews CPU numbers
    torch.manual_seed(0)
    op_seconds = {name: timed(fn, device, args.warmup, args.reps)
                  for name, fn in augment_ops(args.batch, device).items()}
    teacher = teacher_step_seconds(teacher_batch, device, 1, args.teacher_reps) * args.batch / teacher_batch
    report = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "load_avg_1min_before": load_before,
        "torch": torch.__version__, "kornia": kornia.__version__,
        "batch": args.batch, "teacher_batch": teacher_batch,
        "teacher_precision": "bf16 autocast, channels_last" if device.type == "cuda" else "float32",
        "teacher_step_ms": 1e3 * teacher,
        "teacher_step_scaled": teacher_batch != args.batch,
        "ops": {name: {"ms": 1e3 * s, "pct_of_teacher_step": 100 * s / teacher} for name, s in op_seconds.items()},
    }
    print(json.dumps(report, indent=2) if args.json else format_table(report))


def format_table(report: dict) -> str:
    scaled = f" (timed at batch {report['teacher_batch']}, scaled linearly)" if report["teacher_step_scaled"] else ""
    load = report.get("load_avg_1min_before")
    width = max(30, *(len(name) for name in report["ops"]))
    lines = [
        f"device {report['device']}, {report['cpu_threads']} CPU threads"
        + (f" (1-min load average before the run {load:.2f})" if load is not None else "")
        + f", torch {report['torch']}, kornia {report['kornia']}, batch {report['batch']} x 3x32x32",
        f"teacher step (ResNet50 CIFAR stem, {report['teacher_precision']}) at batch {report['batch']}: "
        f"{report['teacher_step_ms']:.1f} ms{scaled}",
        "",
        f"| {'op':<{width}} | {'ms / batch':>10} | {'% teacher step':>14} |",
        f"|{'-' * (width + 2)}|{'-' * 11}:|{'-' * 15}:|",
    ]
    for name, row in report["ops"].items():
        flag = " *" if row["pct_of_teacher_step"] > 10 else ""
        lines.append(f"| {name:<{width}} | {row['ms']:>10.3f} | {row['pct_of_teacher_step']:>12.3f}{flag:2} |")
    lines.append("\n* more than 10% of a teacher step")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
