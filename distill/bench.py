"""Throughput benchmarks: our training step, inference, distillation and "the usual recipe".

`distill bench` times the project's own code paths on synthetic data (no data set needed):

- train: `distill.train.train_step` on a Loop built by `distill.build.make_loop` (method none, default
  augmentation, EMA), exactly what `distill teach` / `distill student --no-teacher` run per batch;
- infer: `distill.train.predict` (eval mode, autocast) under `torch.inference_mode`; with --runtime, also the
  same model exported in-process by `distill.export` (onnxruntime, torchscript, pt2), read back and fed the same
  uint8 batch: preprocessing, forward and softmax in both, fp32 on the CPU;
- distill: the student's `train_step` with a randomly initialised teacher built like a loaded one
  (`model_from_checkpoint`), plus the teacher's forward pass alone ("teacher_forward");
- reference_train (--reference): a DataLoader over PIL images with CPU transforms, fp32, plain SGD,
  torch's default backend flags: what most users start from. Same model, batch and device, same
  process, so `reference_ratio` (ours / reference) compares like with like.

Each figure is batch / median step time over `steps` timed steps after `warmup` untimed ones, with
the GPU synchronized around each timed step. The other steps of bench/gpu.sh (matmul ceiling,
data-load timing, the summary of a GPU run) are in `distill.gpu_report`.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from distill import config as C
from distill.errors import UserError

MODES = ("train", "infer", "distill")
PRECISIONS = ("auto", "bf16", "fp32")
NUM_CLASSES, IMAGE_SIZE = 10, 32
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
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


def _at_least(name: str, value: int, low: int) -> int:
    if value < low:
        raise UserError(f"--{name} must be at least {low} (got {value})")
    return value


def resolve_options(archs: list[str] | None, modes: list[str] | None, batch_size: int | None, device: str,
                    precision: str, channels_last: bool | None, compile: bool, teacher_arch: str,
                    warmup: int | None, steps: int | None, reference: bool = False,
                    num_workers: int | None = None, data: str | None = None,
                    compile_mode: str = "default", runtimes: list[str] | None = None) -> BenchOptions:
    """Check every value before anything runs (a typo in the last --arch must not cost minutes),
    then fill the device-dependent defaults."""
    from distill.models import family_of
    from distill.build import resolve_device

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
        batch_size=_at_least("batch-size", default_batch if batch_size is None else batch_size, 1),
        precision="bf16" if precision == "bf16" or (precision == "auto" and cuda) else "fp32",
        channels_last=cuda if channels_last is None else channels_last, compile=compile, compile_mode=compile_mode,
        teacher_arch=teacher_arch, warmup=_at_least("warmup", default_warmup if warmup is None else warmup, 0),
        steps=_at_least("steps", default_steps if steps is None else steps, 1), reference=reference,
        num_workers=_at_least("num-workers", min(8, os.cpu_count() or 1) if num_workers is None else num_workers, 0),
        data=data, runtimes=runtimes)


def check_runtimes(runtimes: list[str] | None, modes: list[str], device: torch.device, precision: str) -> list[str]:
    """Exported models are timed on the CPU in fp32, beside eager torch in the same setting."""
    from distill.cli_deploy import parse_runtimes, require_onnx

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
    from distill.build import device_name

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
    from distill.evaluation import model_from_checkpoint
    from distill.models import build_model, make_spec
    from distill.train import TeacherModel

    spec = make_spec(opts.teacher_arch, NUM_CLASSES, IMAGE_SIZE)
    torch.manual_seed(1)  # the same random teacher in every call
    ck = {"spec": spec, "model": build_model(spec).state_dict(), "normalization": {"mean": stats[0], "std": stats[1]}}
    return TeacherModel(*model_from_checkpoint(ck, RANDOM_TEACHER, opts.device, opts.channels_last))


def bench_loop(opts: BenchOptions, arch: str, distill: bool):
    """A Loop over one batch of synthetic data, built by `distill.build.make_loop` and compiled by
    `compile_models` exactly as a run's is."""
    from distill.data import Splits, channel_stats
    from distill.build import compile_models, configure_backends, make_loop

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
    from distill.train import train_step

    idx = torch.randperm(len(loop.train_x), device=loop.device)[:loop.batch_size]
    return median_step_seconds(lambda i: train_step(loop, idx, i),
                               opts.device, opts.warmup, opts.steps)


def time_forward(opts: BenchOptions, model: nn.Module, preprocess: nn.Module,
                 amp: torch.dtype | None) -> tuple[float, float]:
    """Median seconds of one eval forward pass (`predict`) of a batch, under inference_mode."""
    from distill.train import predict

    x = synthetic_images(opts.batch_size)[0].to(opts.device)

    def step(_: int) -> Tensor:
        with torch.inference_mode():
            return predict(model, preprocess, x, opts.batch_size, False, amp, opts.channels_last)

    return median_step_seconds(step, opts.device, opts.warmup, opts.steps)


def result_row(opts: BenchOptions, arch: str, mode: str, timing: tuple[float, float], model: nn.Module,
               **extra) -> dict:
    from distill.modelinfo import count_params
    from distill.train import unwrap

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
    from distill.cli_deploy import RUNTIMES
    from distill.export import Deployed, export_bytes, load_runner
    from distill.train import unwrap

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


class PILImages(torch.utils.data.Dataset):
    """An in-memory list of PIL images with labels, transformed per item like torchvision's CIFAR10."""

    def __init__(self, images: list, labels: list[int], transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference_images(opts: BenchOptions, count: int) -> tuple[list, list[int]]:
    """`count` PIL images: synthetic, or the first training images of --data (repeated if fewer)."""
    from PIL import Image

    if opts.data:
        from distill.data import load_dataset

        ds = load_dataset(opts.data, IMAGE_SIZE)
        reps = -(-count // len(ds.train_x))
        x, y = ds.train_x.repeat(reps, 1, 1, 1)[:count], ds.train_y.repeat(reps)[:count]
    else:
        x, y = synthetic_images(count)
    return [Image.fromarray(a) for a in x.permute(0, 2, 3, 1).numpy()], y.tolist()


def reference_loader(opts: BenchOptions) -> torch.utils.data.DataLoader:
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    images, labels = reference_images(opts, (opts.warmup + opts.steps) * opts.batch_size)
    return torch.utils.data.DataLoader(PILImages(images, labels, transform), batch_size=opts.batch_size,
                                       shuffle=True, drop_last=True, num_workers=opts.num_workers,
                                       pin_memory=opts.device.type == "cuda")


@contextlib.contextmanager
def torch_default_backends() -> Iterator[None]:
    """The backend flags a fresh process has: our runs turn on cudnn.benchmark and TF32 (process-wide),
    the usual recipe does not."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = False, False
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def bench_reference(opts: BenchOptions, arch: str) -> dict:
    """The usual recipe: DataLoader + CPU transforms, fp32, contiguous, plain SGD + CrossEntropyLoss."""
    from distill.models import build_model, make_spec

    torch.manual_seed(0)
    with torch_default_backends():
        model = build_model(make_spec(arch, NUM_CLASSES, IMAGE_SIZE)).to(opts.device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        criterion = nn.CrossEntropyLoss()
        batches = iter(reference_loader(opts))

        def step(_: int) -> None:
            x, y = next(batches)
            x, y = x.to(opts.device, non_blocking=True), y.to(opts.device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        timing = median_step_seconds(step, opts.device, opts.warmup, opts.steps)
        del batches  # stops the loader's worker processes now
    return result_row(opts, arch, "reference_train", timing, model, precision="fp32", channels_last=False,
                      compile=False, compile_mode=None, num_workers=opts.num_workers, data=opts.data or "synthetic")


# ----------------------------------------------------------------------------------- the report


def run_bench(opts: BenchOptions) -> dict:
    """Every (arch, mode) pair, then the reference per arch; one JSON-ready report."""
    modes = opts.modes + (["train"] if opts.reference and "train" not in opts.modes else [])
    rows: list[dict] = []
    for arch in opts.archs:
        for mode in modes:
            if mode == "distill":
                first = not any(r["mode"] == "teacher_forward" for r in rows)
                rows += bench_distill(opts, arch, with_teacher_forward=first)
            else:
                rows += (bench_train if mode == "train" else bench_infer)(opts, arch)
            free_memory()
        if opts.reference:
            rows.append(with_ratio(bench_reference(opts, arch), rows))
            free_memory()
    report = {"device": device_label(opts.device), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "results": rows}
    refs = [r for r in rows if r["mode"] == "reference_train"]
    if refs:  # of the first --arch; every reference row carries its own ratio
        report["reference_ratio"] = refs[0]["ratio"]
    return report


def with_ratio(ref: dict, rows: list[dict]) -> dict:
    ours = next(r for r in rows if r["arch"] == ref["arch"] and r["mode"] == "train")
    return {**ref, "ratio": ours["images_per_second"] / ref["images_per_second"]}


def print_bench(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distill bench on {report['device']} (torch {report['torch']}): median step time")
    for col in ("arch", "mode", "batch", "setup", "images/s", "ms/step", "params (M)"):
        table.add_column(col, justify="left" if col in ("arch", "mode", "setup") else "right")
    for r in report["results"]:
        compiled = [f"compile ({r.get('compile_mode') or 'default'})"] if r["compile"] else []
        runtime = [r["runtime"]] if r.get("runtime", "torch") != "torch" else []
        setup = " ".join([r["precision"]] + ["channels_last"] * r["channels_last"] + compiled + runtime)
        table.add_row(r["arch"], r["mode"], str(r["batch_size"]), setup, f"{r['images_per_second']:,.0f}",
                      f"{r['step_ms']:.2f}", f"{r['params'] / 1e6:.2f}")
    console = Console()
    console.print(table)
    for r in report["results"]:
        if "ratio" in r:
            console.print(f"{r['arch']}: our training step is {r['ratio']:.2f}x the usual recipe "
                          f"(DataLoader, {r['num_workers']} workers, fp32)")
        if "vs_torch" in r:
            console.print(f"{r['arch']} infer, batch {r['batch_size']}: {r['runtime']} is {r['vs_torch']:.2f}x as fast "
                          f"as eager torch")
