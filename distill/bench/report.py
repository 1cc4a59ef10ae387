"""One `distill bench` run: every arch and mode asked for, the reference beside ours, and the table."""

from __future__ import annotations

import datetime

import torch

from distill.bench.options import BenchOptions
from distill.bench.reference import bench_reference
from distill.bench.timing import bench_distill, bench_infer, bench_train, device_label, free_memory


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
