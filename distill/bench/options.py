"""What `distill bench` measures: its options, resolved and checked once, with per-device defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from distill.errors import UserError
from distill.front import config as C
from distill.front.options import AT_LEAST_1, NON_NEGATIVE, Range


MODES = ("train", "infer", "distill")


PRECISIONS = ("auto", "bf16", "fp32")


NUM_CLASSES, IMAGE_SIZE = 10, 32


# Per device: (warmup, steps, batch). A CPU step of a ResNet50 takes seconds, so keep it short there.
DEFAULTS = {"cuda": (10, 30, 512), "cpu": (1, 3, 16)}


RANDOM_TEACHER = "(randomly initialised teacher: timing only)"


@dataclass
class BenchOptions:
    archs: list[str]
    modes: list[str]
    batch_size: int
    device: torch.device
    precision: str  # resolved: "bf16" or "fp32"
    channels_last: bool
    compile: bool
    compile_mode: str  # torch.compile's mode, also for the teacher of --mode distill
    teacher_arch: str
    warmup: int
    steps: int
    reference: bool = False
    num_workers: int = 0
    data: str | None = None
    runtimes: list[str] = field(default_factory=lambda: ["torch"])  # of --mode infer: see check_runtimes


def _in_range(name: str, value: int | None, default: int, within: Range) -> int:
    """The value given (else the device's default), in the range the training options use: bounded above too, so
    that a 400-digit --steps is refused instead of running until killed."""
    value = default if value is None else value
    within.check(name, value)
    return value


def bench_options(archs: list[str] | None, modes: list[str] | None, batch_size: int | None, device: str,
                    precision: str, channels_last: bool | None, compile: bool, teacher_arch: str,
                    warmup: int | None, steps: int | None, reference: bool = False,
                    num_workers: int | None = None, data: str | None = None,
                    compile_mode: str = "default", runtimes: list[str] | None = None) -> BenchOptions:
    """Check every value before anything runs (a typo in the last --arch must not cost minutes),
    then fill the device-dependent defaults."""
    from distill.models import family_of
    from distill.engine.device import resolve_device

    archs, modes = list(archs or ["resnet50"]), list(dict.fromkeys(modes or ["train"]))
    for arch in [*archs, teacher_arch]:
        family_of(arch)  # raises UserError listing the valid archs
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise UserError(f"unknown mode '{bad[0]}': choose one of {', '.join(MODES)} (repeat --mode for several)")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    C.check_choice("compile_mode", compile_mode)
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    default_warmup, default_steps, default_batch = DEFAULTS[dev.type]
    runtimes = check_runtimes(runtimes, modes, dev, precision)
    return BenchOptions(
        archs=archs, modes=modes, device=dev,
        batch_size=_in_range("batch_size", batch_size, default_batch, AT_LEAST_1),
        precision="bf16" if precision == "bf16" or (precision == "auto" and cuda) else "fp32",
        channels_last=cuda if channels_last is None else channels_last, compile=compile, compile_mode=compile_mode,
        teacher_arch=teacher_arch, warmup=_in_range("warmup", warmup, default_warmup, NON_NEGATIVE),
        steps=_in_range("steps", steps, default_steps, AT_LEAST_1), reference=reference,
        num_workers=_in_range("num_workers", num_workers, min(8, os.cpu_count() or 1), NON_NEGATIVE),
        data=data, runtimes=runtimes)


def check_runtimes(runtimes: list[str] | None, modes: list[str], device: torch.device, precision: str) -> list[str]:
    """Exported models are timed on the CPU in fp32, beside eager torch in the same setting."""
    from distill.deploy.formats import parse_runtimes, require_onnx

    runtimes = parse_runtimes(runtimes)
    exported = [r for r in runtimes if r != "torch"]
    if exported and "infer" not in modes:
        raise UserError(f"--runtime {exported[0]} times inference: add --mode infer")
    if exported and (device.type != "cpu" or precision == "bf16"):
        raise UserError(f"--runtime {exported[0]} times the exported fp32 model on the CPU: use --device cpu and "
                        f"--precision fp32 (or --runtime torch alone)")
    if "onnxruntime" in runtimes:
        require_onnx("--runtime onnxruntime")
    return runtimes
