"""Throughput of our own code paths: the training step, inference and distillation (the usual recipe beside
them is bench/reference.py; one whole `distill bench` run is bench/report.py).

`distill bench` times the project's own code paths on synthetic data (no data set needed):

- train: `distill.engine.loop.train_step` on a Loop built by `distill.engine.build.make_loop` (method none, default
  augmentation, EMA), exactly what `distill teach` / `distill student --no-teacher` run per batch;
- infer: `distill.engine.loop.predict` (eval mode, autocast) under `torch.inference_mode`; with --runtime, also the
  same model exported in-process by `distill.deploy.export` (onnxruntime, torchscript, pt2), read back and fed the same
  uint8 batch: preprocessing, forward and softmax in both, fp32 on the CPU;
- distill: the student's `train_step` with a randomly initialised teacher built like a loaded one
  (`model_from_checkpoint`), plus the teacher's forward pass alone ("teacher_forward");
- reference_train (--reference): a DataLoader over PIL images with CPU transforms, fp32, plain SGD,
  torch's default backend flags: what most users start from. Same model, batch and device, same
  process, so `reference_ratio` (ours / reference) compares like with like.

Each figure is batch / median step time over `steps` timed steps after `warmup` untimed ones, with
the GPU synchronized around each timed step. The other steps of bench/gpu.sh (matmul ceiling,
data-load timing, the summary of a GPU run) are in `distill.bench.gpu`.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from typing import Callable

import torch
from torch import Tensor, nn

from distill.bench.options import IMAGE_SIZE, NUM_CLASSES, RANDOM_TEACHER, BenchOptions
from distill.front import config as C


# ------------------------------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_seconds(step: Callable[[int], object], device: torch.device, warmup: int,
                        steps: int) -> tuple[float, float]:
    """Median wall time of step(i) over `steps` calls after `warmup` untimed calls, and the seconds
    the warm-up took (cuDNN autotuning; with --compile, mostly compile time)."""
    start = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync(device)
    warmup_seconds = time.perf_counter() - start
    times = []
    for i in range(steps):
        sync(device)  # nothing queued before the step may count toward it
        start = time.perf_counter()
        step(warmup + i)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), warmup_seconds


def free_memory() -> None:
    """Drop the last benchmark's models and caches before the next one allocates."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_label(device: torch.device) -> str:
    from distill.engine.device import device_name

    return device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"


# ------------------------------------------------------------------------- our code paths, timed


def synthetic_images(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random uint8 CIFAR-shaped images and labels 0..9 (CPU tensors; seeded)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=gen)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=gen)


def run_config(opts: BenchOptions, arch: str, distill: bool) -> C.TrainConfig:
    """The config `distill teach` / `distill student` would build for these settings."""
    from distill.models import family_of

    common = dict(arch=arch, batch_size=opts.batch_size, precision=opts.precision, channels_last=opts.channels_last,
                  compile=opts.compile, compile_mode=opts.compile_mode, device=str(opts.device), epochs=1, val_size=0)
    if distill:  # the method only checks that a teacher is named; bench_loop passes the model itself
        cfg = C.StudentConfig(**common, teacher=RANDOM_TEACHER, method="kd", compile_teacher=opts.compile)
    elif family_of(arch) == "teacher":
        cfg = C.TeachConfig(**common)
    else:
        cfg = C.StudentConfig(**common, method="none")
    cfg.validate()
    return cfg


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def random_teacher(opts: BenchOptions, stats: tuple[list[float], list[float]]):
    """A teacher built the way `load_teacher` builds one (eval, frozen, channels_last), random weights."""
    from distill.engine.evaluate import model_from_checkpoint
    from distill.models import build_model, make_spec
    from distill.engine.loop import TeacherModel

    spec = make_spec(opts.teacher_arch, NUM_CLASSES, IMAGE_SIZE)
    torch.manual_seed(1)  # the same random teacher in every call
    ck = {"spec": spec, "model": build_model(spec).state_dict(), "normalization": {"mean": stats[0], "std": stats[1]}}
    return TeacherModel(*model_from_checkpoint(ck, RANDOM_TEACHER, opts.device, opts.channels_last))


def bench_loop(opts: BenchOptions, arch: str, distill: bool):
    """A Loop over one batch of synthetic data, built by `distill.engine.build.make_loop` and compiled by
    `compile_models` exactly as a run's is."""
    from distill.data import Splits, channel_stats
    from distill.engine.device import compile_models, configure_backends
    from distill.engine.build import make_loop

    cfg = run_config(opts, arch, distill)
    configure_backends(cfg, opts.device)
    x, y = synthetic_images(opts.batch_size)
    splits = Splits(x, y, x[:0], y[:0], x[:0], y[:0], [str(c) for c in range(NUM_CLASSES)])
    mean, std = channel_stats(x)
    teacher = random_teacher(opts, (mean, std)) if distill else None
    loop = make_loop([cfg], [arch], splits, opts.device, [{"mean": mean, "std": std}], teacher, fresh=[True])
    compile_models(loop, [cfg])  # after the EMA copied the plain model, as in a run
    return loop


def time_train_steps(opts: BenchOptions, loop) -> tuple[float, float]:
    """Median seconds of the project's train_step, batch gathered from device memory as in training."""
    from distill.engine.loop import train_step

    idx = torch.randperm(len(loop.train_x), device=loop.device)[:loop.batch_size]
    return median_step_seconds(lambda i: train_step(loop, idx, i),
                               opts.device, opts.warmup, opts.steps)


def time_forward(opts: BenchOptions, model: nn.Module, preprocess: nn.Module,
                 amp: torch.dtype | None) -> tuple[float, float]:
    """Median seconds of one eval forward pass (`predict`) of a batch, under inference_mode."""
    from distill.engine.evaluate import predict

    x = synthetic_images(opts.batch_size)[0].to(opts.device)

    def step(_: int) -> Tensor:
        with torch.inference_mode():
            return predict(model, preprocess, x, opts.batch_size, False, amp, opts.channels_last)

    return median_step_seconds(step, opts.device, opts.warmup, opts.steps)


def result_row(opts: BenchOptions, arch: str, mode: str, timing: tuple[float, float], model: nn.Module,
               **extra) -> dict:
    from distill.models.info import count_params
    from distill.models import unwrap

    seconds, warmup_seconds = timing
    row = {"arch": arch, "mode": mode, "batch_size": opts.batch_size, "precision": opts.precision,
           "channels_last": opts.channels_last, "compile": opts.compile,
           "compile_mode": opts.compile_mode if opts.compile else None,
           "images_per_second": opts.batch_size / seconds, "step_ms": seconds * 1e3,
           "params": count_params(unwrap(model)), "warmup": opts.warmup, "steps": opts.steps,
           "warmup_seconds": warmup_seconds}
    return {**row, **extra}


def bench_train(opts: BenchOptions, arch: str) -> list[dict]:
    loop = bench_loop(opts, arch, distill=False)
    return [result_row(opts, arch, "train", time_train_steps(opts, loop), loop.learners[0].model)]


def time_exported(opts: BenchOptions, runtime: str, model: nn.Module, preprocess: nn.Module) -> tuple[float, float]:
    """Median seconds of the model exported in-process (any batch, as a server would load it) and read back as
    its runtime loads a file, fed the same uint8 batch as `time_forward`."""
    from distill.deploy.formats import RUNTIMES
    from distill.deploy.export import Deployed, export_bytes, load_runner
    from distill.models import unwrap

    fmt = RUNTIMES[runtime]
    run = load_runner(fmt, export_bytes(fmt, Deployed(unwrap(model), preprocess), IMAGE_SIZE, dynamic=True))
    x = synthetic_images(opts.batch_size)[0]
    return median_step_seconds(lambda _: run(x), opts.device, opts.warmup, opts.steps)


def bench_infer(opts: BenchOptions, arch: str) -> list[dict]:
    loop = bench_loop(opts, arch, distill=False)  # the same model, preprocessing and autocast as training
    learner = loop.learners[0]
    rows = []
    for runtime in opts.runtimes:
        if runtime == "torch":
            timing = time_forward(opts, learner.model, learner.preprocess, loop.amp_dtype)
            rows.append(result_row(opts, arch, "infer", timing, learner.model, runtime=runtime))
        else:
            timing = time_exported(opts, runtime, learner.model, learner.preprocess)
            rows.append(result_row(opts, arch, "infer", timing, learner.model, runtime=runtime, channels_last=False,
                                   compile=False, compile_mode=None))
    eager = next((r for r in rows if r["runtime"] == "torch"), None)
    for row in rows:  # measured in this process, one after the other: a ratio of like with like
        if eager and row is not eager:
            row["vs_torch"] = eager["step_ms"] / row["step_ms"]
    return rows


def bench_distill(opts: BenchOptions, arch: str, with_teacher_forward: bool) -> list[dict]:
    loop = bench_loop(opts, arch, distill=True)
    teacher = {"teacher_arch": opts.teacher_arch}
    rows = [result_row(opts, arch, "distill", time_train_steps(opts, loop), loop.learners[0].model, **teacher)]
    if with_teacher_forward:  # what the teacher alone costs of each distillation step
        timing = time_forward(opts, loop.teacher.model, loop.teacher.preprocess, loop.amp_dtype)
        rows.append(result_row(opts, opts.teacher_arch, "teacher_forward", timing, loop.teacher.model, **teacher))
    return rows


# ----------------------------------------------------------------------------- the usual recipe


# ----------------------------------------------------------------------------------- the report


