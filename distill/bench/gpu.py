"""The steps of bench/gpu.sh that are not `distill` commands: the bf16 matmul ceiling, the data-load
timing, and <card>-<date>.json, the summary of everything one GPU call measured.

    python -m distill.bench.gpu {matmul, data PATH --cache-dir D, summarize --out OUT --runs RUNS [--also OUT2]}
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from distill.bench.options import IMAGE_SIZE
from distill.bench.timing import sync
from distill.errors import UserError


def matmul_tflops(n: int = 8192, dtype: torch.dtype = torch.bfloat16, device: torch.device | None = None,
                  reps: int = 20) -> float | None:
    """Achieved TFLOP/s of an n x n matmul: the card's practical ceiling to set the models against.
    None on the CPU, where it would take long and say little."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        return None
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty_like(a)
    for _ in range(3):  # cuBLAS picks its kernel and sets up its workspace on the first calls
        torch.matmul(a, b, out=out)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b, out=out)
    sync(device)
    seconds = (time.perf_counter() - start) / reps
    return 2 * n**3 / seconds / 1e12


def time_data_load(path: str, cache_dir: Path) -> dict:
    """Seconds of `load_dataset` from an empty cache (unpack + decode + cache write), then cached."""
    from distill.data import load_dataset

    if cache_dir.exists() and any(cache_dir.iterdir()):
        raise UserError(f"{cache_dir} is not empty: give a new --cache-dir so the first load really is cold")
    times = []
    for _ in range(2):
        start = time.perf_counter()
        ds = load_dataset(path, IMAGE_SIZE, cache_dir)
        times.append(time.perf_counter() - start)
    return {"data": str(path), "source": ds.source, "first_load_seconds": times[0], "cached_load_seconds": times[1],
            "train_images": len(ds.train_x), "test_images": len(ds.test_x), "cpu_count": os.cpu_count()}


def read_json(path: Path) -> dict | list | None:
    """A JSON file, or None when it is missing or cut short (a step that timed out)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_json_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def git_commit() -> str | None:
    """HEAD of the checkout, else $GIT_COMMIT (the GPU machine gets a copy of the tree without .git)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    return os.environ.get("GIT_COMMIT") or None


def run_stages(runs: Path, pipeline: dict | None) -> dict[str, dict]:
    """Each run's metrics.json under the pipeline folder, keyed by its folder relative to it, with the
    stage's wall time from pipeline.json (stage name = folder name)."""
    stage_seconds = {s.get("name"): s.get("wall_seconds") for s in (pipeline or {}).get("stages", [])}
    stages = {}
    for path in sorted(runs.rglob("metrics.json")) if runs.is_dir() else []:
        m = read_json(path) or {}
        stages[path.parent.relative_to(runs).as_posix()] = {
            "arch": m.get("arch"), "role": m.get("role"), "method": m.get("method"),
            "test_accuracy": m.get("test_accuracy"), "epochs": m.get("epochs"),
            "images_per_second": m.get("train_images_per_second"), "wall_seconds": m.get("wall_seconds"),
            "steady_images_per_second": m.get("steady_images_per_second"),
            "first_epoch_seconds": m.get("first_epoch_seconds"), "trained_with": m.get("trained_with"),
            "stage_wall_seconds": stage_seconds.get(path.parent.name)}
    return stages


def bench_figures(rows: list[dict]) -> dict:
    """The headline throughputs out of the `distill bench` rows of the run: those without torch.compile
    (what a run does by default), then each compiled row under "compiled"."""
    from distill.models import family_of

    plain = [r for r in rows if not r.get("compile")]

    def ips(mode: str, teacher: bool) -> dict[str, float]:  # per arch, its first row: bench before reference
        found: dict[str, float] = {}
        for r in plain:
            if r["mode"] == mode and (family_of(r["arch"]) == "teacher") == teacher:
                found.setdefault(r["arch"], r["images_per_second"])
        return found

    first = lambda d: next(iter(d.values()), None)  # noqa: E731
    forward = {r["arch"]: r["images_per_second"] for r in plain if r["mode"] == "teacher_forward"}
    compiled = {f"{r['arch']} {r['mode']} {r.get('compile_mode') or 'default'}":
                {"images_per_second": r["images_per_second"], "step_ms": r["step_ms"],
                 "warmup_seconds": r.get("warmup_seconds")} for r in rows if r.get("compile")}
    return {"teacher_train_images_per_second": first(ips("train", True)),
            "teacher_infer_images_per_second": first(ips("infer", True)),
            "student_train_images_per_second": ips("train", False),
            "student_infer_images_per_second": ips("infer", False),
            "distill_images_per_second": ips("distill", False),
            "teacher_forward_images_per_second": first(forward), "compiled": compiled}


GPU_FILES = {"matmul": "01_matmul.json", "bench": "02_bench.jsonl", "reference": "03_reference.json",
             "data": "04_data.json", "augment": "05_augment.json", "compare": "compare.json"}


def results_name(summary: dict) -> str:
    """bench/results/<card>-<date>.json: 'h100-2026-11-28.json' for an NVIDIA H100 80GB HBM3, 'cpu-...' on the CPU."""
    device = (summary.get("device") or "unknown").lower()
    found = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", device.replace("nvidia", ""))
    card = "cpu" if device.startswith("cpu") else (found.group(1) if found else re.sub(r"[^a-z0-9]+", "-", device))
    return f"{card}-{summary['date'][:10]}.json"


def gpu_file(outs: list[Path], name: str) -> Path:
    """The first of the output folders that holds this file (the first folder's path if none does)."""
    paths = [out / GPU_FILES[name] for out in outs]
    return next((p for p in paths if p.is_file() and p.stat().st_size > 0), paths[0])


def this_device() -> str:
    from distill.bench.timing import device_label

    return device_label(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def strong_share(augment: dict | None) -> float | None:
    """The `strong` preset's cost as a % of a ResNet50 step (bench/augment_cost.py's row for it)."""
    row = ((augment or {}).get("ops") or {}).get("pipeline strong") or {}
    return row.get("pct_of_teacher_step")


def summarize(out: Path, runs: Path, pipeline_seconds: float | None = None, pipeline_rc: int | None = None,
              also: list[Path] | None = None) -> dict:
    """The summary of what bench/gpu.sh left in `out` (and in the folders `also`, the outputs of
    other calls of it) and the pipeline's folder `runs`; a missing input gives nulls (and a name in
    "missing"), never an error."""
    outs = [out, *(also or [])]
    inputs = {name: gpu_file(outs, name) for name in GPU_FILES} | {"pipeline": runs / "pipeline.json"}
    reports = [rep for o in outs for rep in read_json_lines(o / GPU_FILES["bench"])]
    ref_reports = [rep for o in outs for rep in read_json_lines(o / GPU_FILES["reference"])]
    rows = [r for rep in reports + ref_reports for r in rep.get("results", [])]
    refs = [r for r in rows if r["mode"] == "reference_train"]  # the first is the headline (8 workers)
    pipeline = read_json(inputs["pipeline"])
    stages = run_stages(runs, pipeline)
    first = (reports + ref_reports + [{}])[0]
    missing = [name for name, path in inputs.items() if not path.is_file() or path.stat().st_size == 0]
    augment = read_json(inputs["augment"])
    return {
        # summarize runs on the machine that measured: without a bench report, it names the card itself
        "device": first.get("device") or this_device(), "torch": first.get("torch") or torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
        "matmul_tflops": (read_json(inputs["matmul"]) or {}).get("tflops"),
        **bench_figures([r for r in rows if r["mode"] != "reference_train"]),
        "reference_images_per_second": refs[0]["images_per_second"] if refs else None,
        "reference_ratio": refs[0].get("ratio") if refs else None,
        "reference_ratio_by_workers": {str(r.get("num_workers")): r.get("ratio") for r in reversed(refs)},  # first wins
        # pipeline.json's own total (written after each stage, so also after a cut-short run), else the command's
        "pipeline_wall_seconds": (pipeline or {}).get("total_seconds", pipeline_seconds),
        "pipeline_finished": (pipeline or {}).get("finished"),
        "pipeline_command_seconds": pipeline_seconds, "pipeline_exit_code": pipeline_rc,
        "test_accuracy": {name: s["test_accuracy"] for name, s in stages.items() if s["test_accuracy"] is not None},
        "stages": stages, "pipeline": pipeline, "data_load": read_json(inputs["data"]),
        "augment": augment, "strong_augment_percent_of_teacher_step": strong_share(augment),
        "bench_rows": rows, "missing": missing,
    }


def main(argv: list[str] | None = None) -> None:
    """python -m distill.bench.gpu {matmul, data, summarize}: the steps of bench/gpu.sh that are not CLI commands."""
    ap = argparse.ArgumentParser(prog="python -m distill.bench.gpu", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mm = sub.add_parser("matmul", help="bf16 matmul TFLOP/s (null on the CPU), as JSON")
    mm.add_argument("--n", type=int, default=8192)
    data = sub.add_parser("data", help="time load_dataset cold and cached, as JSON")
    data.add_argument("path")
    data.add_argument("--cache-dir", type=Path, required=True)
    summ = sub.add_parser("summarize", help="write <card>-<date>.json from a gpu.sh output folder")
    summ.add_argument("--out", type=Path, required=True, help="gpu.sh's output folder (read, and written to)")
    summ.add_argument("--runs", type=Path, required=True, help="the pipeline's --out folder")
    summ.add_argument("--pipeline-seconds", type=float, default=None)
    summ.add_argument("--pipeline-rc", type=int, default=None)
    summ.add_argument("--also", type=Path, action="append", default=[],
                      help="another gpu.sh output folder to read (repeatable): merges the calls of one session")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "matmul":
            result = {"n": args.n, "dtype": "bfloat16", "tflops": matmul_tflops(args.n)}
        elif args.cmd == "data":
            result = time_data_load(args.path, args.cache_dir)
        else:
            result = summarize(args.out, args.runs, args.pipeline_seconds, args.pipeline_rc, args.also)
            (args.out / results_name(result)).write_text(json.dumps(result, indent=2))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    shown = {k: v for k, v in result.items() if k != "bench_rows"}  # the rows are in the file; keep stdout short
    print(json.dumps(shown, indent=2) if args.cmd == "summarize" else json.dumps(result))


if __name__ == "__main__":
    main()
