"""`distill bench`: throughput of models and of the usual recipe (registered on distill.front.cli.app)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from distill.front import config as C
from distill.front.app import app


@app.command("bench")
def bench_command(
    arch: Optional[list[str]] = typer.Option(
        None, "--arch", metavar="ARCH", help="Model to time; repeat for several (default resnet50; see `distill models`)."),
    mode: Optional[list[str]] = typer.Option(
        None, "--mode", metavar="MODE", help="train (our training step), infer (eval forward) or distill (student step with a "
        "teacher, plus the teacher's forward alone); repeat for several (default train)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step (default 512 on CUDA, 16 on the CPU)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    precision: str = typer.Option("auto", help="bf16 or fp32 (auto: bf16 on CUDA, fp32 on the CPU)."),
    channels_last: Optional[bool] = typer.Option(
        None, "--channels-last/--no-channels-last", help="channels_last memory format (default: on for CUDA)."),
    compile_model: bool = typer.Option(
        False, "--compile", help="torch.compile the model, and in --mode distill the teacher too (compile time falls "
        "into the warm-up steps, reported as warmup_seconds)."),
    compile_mode: str = typer.Option(
        "default", help="torch.compile mode with --compile: default, reduce-overhead (CUDA graphs) or max-autotune."),
    teacher_arch: str = typer.Option("resnet50", help="Teacher of --mode distill (random weights: timing only)."),
    steps: Optional[int] = typer.Option(
        None, help="Timed steps; the median counts (default 30 on CUDA, 3 on the CPU)."),
    warmup: Optional[int] = typer.Option(None, help="Untimed steps first (default 10 on CUDA, 1 on the CPU)."),
    reference: bool = typer.Option(
        False, "--reference", help="Also time the usual recipe (DataLoader + CPU transforms, fp32, plain SGD) with "
        "the same model and batch, and report ours / reference."),
    num_workers: Optional[int] = typer.Option(
        None, help="DataLoader workers of --reference (default min(8, CPU count))."),
    data: Optional[str] = typer.Option(
        None, help="Real images for --reference (any --data of `distill teach`; default synthetic)."),
    runtime: Optional[list[str]] = typer.Option(
        None, "--runtime", metavar="RUNTIME", help="What --mode infer times: torch (eager, the default), onnxruntime, "
        "torchscript or pt2 (the model exported in-process, as `distill export --dynamic-batch` writes it; CPU, "
        "fp32); repeat or separate with commas, e.g. torch,onnxruntime,torchscript, for ratios from one run."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Images per second of our training step, inference and distillation (synthetic data on the device)."""
    from distill.deploy.formats import parse_runtimes

    runtimes = parse_runtimes(runtime)  # a typo answers before torch is imported, and so does a missing --data
    C.check_data(data, download=None)
    from distill.bench.options import bench_options
    from distill.bench.report import print_bench, run_bench

    opts = bench_options(arch, mode, batch_size, device, precision, channels_last, compile_model, teacher_arch,
                           warmup, steps, reference, num_workers, data, compile_mode, runtimes)
    report = run_bench(opts)
    print(json.dumps(report)) if json_out else print_bench(report)
