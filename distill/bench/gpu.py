"""The steps of bench/gpu.sh that are not `distill` commands: the bf16 matmul ceiling, the data-load
timing, the record of a pipeline command, and <card>-<date>.json, the summary of everything the GPU calls
of a session measured.

    python -m distill.bench.gpu matmul
    python -m distill.bench.gpu data PATH --cache-dir D
    python -m distill.bench.gpu record --call N --config C --runs RUNS --exit-code RC --seconds S --compiled BOOL --out F
    python -m distill.bench.gpu summarize --out OUT --runs RUNS [--also OUT1 ...]

Torch is imported only where it is used: gpu.sh calls `record` between steps, and it should take no time.
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

from distill.errors import UserError


def matmul_tflops(n: int = 8192, dtype=None, device=None, reps: int = 20) -> float | None:
    """Achieved TFLOP/s of an n x n matmul (bf16 unless `dtype`): the card's practical ceiling to set the models
    against. None on the CPU, where it would take long and say little."""
    import torch

    from distill.bench.timing import sync

    dtype = dtype or torch.bfloat16
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
    from distill.bench.options import IMAGE_SIZE
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
            "stage_wall_seconds": stage_seconds.get(path.parent.name),
            # a student's gain over the baseline it trained with (compare.json has it for every student)
            "baseline_run": m.get("baseline"), "gain_over_baseline": m.get("gain_over_baseline"),
            "gain_interval": m.get("gain_interval"), "mcnemar_p": m.get("mcnemar_p")}
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
             "data": "04_data.json", "augment": "05_augment.json", "compare": "compare.json",
             "preflight": "preflight.json", "airbench": "airbench.json", "fm": "fm.json"}
HEADLINE_FILE = "headline.json"  # written by each call that ran or continued the headline: all are read
GAIN_KEYS = ("baseline_run", "gain_over_baseline", "gain_interval", "mcnemar_p")  # points, [low, high], p


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
    import torch

    from distill.bench.timing import device_label

    return device_label(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def strong_share(augment: dict | None) -> float | None:
    """The `strong` preset's cost as a % of a ResNet50 step (bench/augment_cost.py's row for it)."""
    row = ((augment or {}).get("ops") or {}).get("pipeline strong") or {}
    return row.get("pct_of_teacher_step")


def pipeline_record(call: int, config: str, runs: Path, exit_code: int, seconds: float, compiled: bool,
                    fresh: bool, note: str | None = None) -> dict:
    """One pipeline command of a call: exit code, seconds, compiled or not, whether it started from an empty
    folder (a cold run), and the pipeline.json it left, kept here because the next pipeline run in the same
    folder (the function-matching student's) rewrites that file."""
    return {"call": call, "config": config, "exit_code": exit_code, "command_seconds": seconds,
            "timed_out": exit_code in (124, 137), "compiled": compiled, "fresh": fresh, "note": note or None,
            "pipeline": read_json(runs / "pipeline.json")}


def headline_records(outs: list[Path]) -> list[dict]:
    records = [r for out in outs if isinstance(r := read_json(out / HEADLINE_FILE), dict)]
    return sorted(records, key=lambda r: r.get("call") or 0)


def gain_of(name: str, stage: dict, compare_rows: dict) -> dict:
    """A student's gain over its baseline: compare.json's (every student of the folder), else its metrics'."""
    row = compare_rows.get(name, {})
    return {k: row.get(k) if row.get(k) is not None else stage.get(k) for k in GAIN_KEYS}


def call_row(record: dict) -> dict:
    pipeline = record.get("pipeline") or {}
    return {k: record.get(k) for k in ("call", "exit_code", "command_seconds", "timed_out", "compiled", "fresh")} | {
        "finished": pipeline.get("finished"), "pipeline_seconds": pipeline.get("total_seconds")}


def headline_summary(records: list[dict], stages: dict[str, dict], compare_rows: dict, others: list[str]) -> dict | None:
    """The headline pipeline over the calls that ran it: teacher, each student's gain, and its time cold
    (the total of a run that started from an empty folder and finished in that one command)."""
    if not records:
        return None
    first, last = records[0], records[-1]
    ours = {name: s for name, s in stages.items() if name not in others}
    name, teacher = next(((n, s) for n, s in ours.items() if s["role"] == "teacher"), (None, {}))
    first_pipeline = first.get("pipeline") or {}
    cold = first.get("fresh") is True and first_pipeline.get("finished") is True
    return {"config": first.get("config"), "compiled": all(r.get("compiled") for r in records),
            "notes": list(dict.fromkeys(r["note"] for r in records if r.get("note"))),
            "finished": (last.get("pipeline") or {}).get("finished") is True,
            "cold_total_seconds": first_pipeline.get("total_seconds") if cold else None,
            "calls": [call_row(r) for r in records],
            "teacher": {"run": name} | {k: teacher.get(k) for k in (
                "test_accuracy", "steady_images_per_second", "images_per_second", "first_epoch_seconds",
                "wall_seconds", "epochs")},
            "students": {n: {"arch": s["arch"], "method": s["method"], "test_accuracy": s["test_accuracy"],
                             **gain_of(n, s, compare_rows)} for n, s in ours.items() if s["role"] == "student"}}


def fm_runs(fm: dict | None) -> list[str]:
    """The runs the function-matching pipeline trained (its teacher stage is the headline's, skipped)."""
    stages = ((fm or {}).get("pipeline") or {}).get("stages") or []
    return [s["name"] for s in stages if s.get("status") != "skipped"]


def paired_students(folder_a: Path, folder_b: Path) -> dict:
    """Student a against student b on the same test images (both runs' predictions.pt): the difference in
    points with its 95% interval and McNemar's exact p; nulls where either file is missing or they differ."""
    import torch

    from distill import stats
    from distill.engine.checkpoint import PREDICTIONS_FILE, PredictionsError, read_predictions

    empty = {"difference_points": None, "difference_interval": None, "difference_mcnemar_p": None}
    try:
        a, b = (read_predictions(folder / PREDICTIONS_FILE) for folder in (folder_a, folder_b))
    except PredictionsError:
        return empty
    if not torch.equal(a["labels"], b["labels"]):
        return empty
    gain, p = stats.paired_comparison(a["top1"] == a["labels"], b["top1"] == b["labels"])
    return {"difference_points": gain.points, "difference_interval": [gain.low, gain.high], "difference_mcnemar_p": p}


def function_matching(fm: dict | None, stages: dict[str, dict], compare_rows: dict, runs: Path) -> dict | None:
    """The function-matching student (call 2) against the headline's plain KD student of the same arch."""
    if not fm:
        return None
    mine = fm_runs(fm)
    result = {k: fm.get(k) for k in ("exit_code", "command_seconds", "timed_out", "compiled", "note")}
    name = next((n for n in mine if (stages.get(n) or {}).get("role") == "student"), None)
    if name is None:
        return result | {"fm_run": None, "kd_run": None}
    s = stages[name]
    kd = next((n for n, o in stages.items() if n not in mine and o["role"] == "student"
               and (o["arch"], o["method"]) == (s["arch"], s["method"])), None)
    result |= {"fm_run": name, "kd_run": kd, "fm_test_accuracy": s["test_accuracy"],
               "kd_test_accuracy": (stages.get(kd) or {}).get("test_accuracy"), "fm_wall_seconds": s["wall_seconds"],
               **{f"fm_{k}": v for k, v in gain_of(name, s, compare_rows).items()}}
    return result | (paired_students(runs / name, runs / kd) if kd else {})


def target(measured, wanted: str, met) -> dict:
    return {"target": wanted, "measured": measured, "met": None if measured is None else bool(met(measured))}


def unjudged(found: dict) -> dict:
    """On the CPU (the smoke of the calls) the targets are GPU targets: what was measured, judged by none."""
    return {name: t | {"met": None} for name, t in found.items()}


def student_targets(students: dict[str, dict]) -> dict:
    found = {}
    for name, s in students.items():
        gain, p = s.get("gain_over_baseline"), s.get("mcnemar_p")
        found[f"{name} over its baseline"] = target(
            None if gain is None else {"gain_points": gain, "mcnemar_p": p}, ">= +1.0 points with McNemar p < 0.05",
            lambda m: m["gain_points"] >= 1.0 and m["mcnemar_p"] is not None and m["mcnemar_p"] < 0.05)
        if (s["arch"], s["method"]) == ("resnet20", "kd"):
            found[f"{name} test accuracy"] = target(s["test_accuracy"], ">= 0.92", lambda v: v >= 0.92)
    return found


def targets(headline: dict | None, preflight: dict | None) -> dict:
    """Issue 16's targets against what was measured (met: null where nothing was)."""
    headline = headline or {}
    teacher = headline.get("teacher") or {}
    return {"teacher test accuracy": target(teacher.get("test_accuracy"), ">= 0.95", lambda v: v >= 0.95),
            "teacher images/s in the pipeline": target(teacher.get("steady_images_per_second"), ">= 20000",
                                                       lambda v: v >= 20000),
            "headline seconds, cold": target(headline.get("cold_total_seconds"), "<= 480", lambda v: v <= 480),
            "preflight seconds": target((preflight or {}).get("total_seconds"), "<= 90", lambda v: v <= 90),
            **student_targets(headline.get("students") or {})}


def preflight_summary(preflight: dict | None) -> dict | None:
    if not isinstance(preflight, dict):
        return None
    steps = {s["name"]: {"status": s.get("status"), "seconds": s.get("seconds"), "compiled": s.get("compiled"),
                         "error": s.get("error"), "uncompiled_retry": (s.get("uncompiled") or {}).get("status")}
             for s in preflight.get("steps", [])}
    return {k: preflight.get(k) for k in ("passed", "total_seconds", "headline_compile", "verdict", "device")} | {
        "steps": steps}


def summarize(out: Path, runs: Path, also: list[Path] | None = None) -> dict:
    """The summary of what bench/gpu.sh left in `out` (and in the folders `also`, the outputs of earlier
    calls of the session) and the pipeline folder `runs`; a missing input gives nulls (and a name in
    "missing"), never an error."""
    outs = [out, *(also or [])]
    inputs = {name: gpu_file(outs, name) for name in GPU_FILES} | {"pipeline": runs / "pipeline.json"}
    reports = [rep for o in outs for rep in read_json_lines(o / GPU_FILES["bench"])]
    ref_reports = [rep for o in outs for rep in read_json_lines(o / GPU_FILES["reference"])]
    rows = [r for rep in reports + ref_reports for r in rep.get("results", [])]
    refs = [r for r in rows if r["mode"] == "reference_train"]  # the first is the headline (8 workers)
    pipeline = read_json(inputs["pipeline"])
    stages = run_stages(runs, pipeline)
    compare_rows = {r["name"]: r for r in (read_json(inputs["compare"]) or {}).get("runs", [])}
    fm, records = read_json(inputs["fm"]), headline_records(outs)
    headline = headline_summary(records, stages, compare_rows, fm_runs(fm))
    preflight = preflight_summary(read_json(inputs["preflight"]))
    first = (reports + ref_reports + [{}])[0]
    missing = [name for name, path in inputs.items() if not path.is_file() or path.stat().st_size == 0]
    augment = read_json(inputs["augment"])
    last = records[-1] if records else {}
    # summarize runs on the machine that measured: without a bench report, it names the card itself
    device = first.get("device") or this_device()
    gpu, goals = not device.startswith("cpu"), targets(headline, preflight)
    return {
        "device": device, "torch": first.get("torch") or torch_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
        "targets": goals if gpu else unjudged(goals), "preflight": preflight, "headline": headline,
        "airbench": read_json(inputs["airbench"]),
        "function_matching": function_matching(fm, stages, compare_rows, runs),
        "matmul_tflops": (read_json(inputs["matmul"]) or {}).get("tflops"),
        **bench_figures([r for r in rows if r["mode"] != "reference_train"]),
        "reference_images_per_second": refs[0]["images_per_second"] if refs else None,
        "reference_ratio": refs[0].get("ratio") if refs else None,
        "reference_ratio_by_workers": {str(r.get("num_workers")): r.get("ratio") for r in reversed(refs)},  # first wins
        # the pipeline.json in `runs` (written after each stage, so also after a cut-short run): the headline's
        "pipeline_wall_seconds": (pipeline or {}).get("total_seconds"),
        "pipeline_finished": (pipeline or {}).get("finished"),
        "pipeline_command_seconds": last.get("command_seconds"), "pipeline_exit_code": last.get("exit_code"),
        "test_accuracy": {name: s["test_accuracy"] for name, s in stages.items() if s["test_accuracy"] is not None},
        "stages": stages, "pipeline": pipeline, "data_load": read_json(inputs["data"]),
        "augment": augment, "strong_augment_percent_of_teacher_step": strong_share(augment),
        "bench_rows": rows, "missing": missing,
    }


def torch_version() -> str:
    import torch

    return torch.__version__


def boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"'{text}' is not true or false")
    return text.lower() in ("true", "yes", "1")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m distill.bench.gpu", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mm = sub.add_parser("matmul", help="bf16 matmul TFLOP/s (null on the CPU), as JSON")
    mm.add_argument("--n", type=int, default=8192)
    data = sub.add_parser("data", help="time load_dataset cold and cached, as JSON")
    data.add_argument("path")
    data.add_argument("--cache-dir", type=Path, required=True)
    rec = sub.add_parser("record", help="write the record of one pipeline command (headline.json, fm.json)")
    rec.add_argument("--call", type=int, required=True, help="which call of the session (1, 2; 0: a lone call)")
    rec.add_argument("--config", required=True)
    rec.add_argument("--runs", type=Path, required=True, help="the pipeline's --out folder")
    rec.add_argument("--exit-code", type=int, required=True)
    rec.add_argument("--seconds", type=float, required=True)
    rec.add_argument("--compiled", type=boolean, required=True, help="true, or false when run with compile=false")
    rec.add_argument("--fresh", type=boolean, required=True, help="true when the folder held no runs before")
    rec.add_argument("--note", default=None)
    rec.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    summ = sub.add_parser("summarize", help="write <card>-<date>.json from gpu.sh output folders")
    summ.add_argument("--out", type=Path, required=True, help="gpu.sh's output folder (read, and written to)")
    summ.add_argument("--runs", type=Path, required=True, help="the pipeline's --out folder")
    summ.add_argument("--also", type=Path, action="append", default=[],
                      help="an earlier call's output folder to read (repeatable): merges the calls of one session")
    return ap


def write_json(value: dict, path: Path) -> None:
    from distill.atomic import write_atomic

    text = json.dumps(value, indent=2).encode()
    write_atomic(path, lambda fh: fh.write(text),
                 lambda err: UserError(f"cannot write {path} ({err.strerror}): free disk space or choose another --out"))


def main(argv: list[str] | None = None) -> None:
    """python -m distill.bench.gpu {matmul, data, record, summarize}: the steps of bench/gpu.sh that are not
    CLI commands."""
    args = parser().parse_args(argv)
    try:
        if args.cmd == "matmul":
            result = {"n": args.n, "dtype": "bfloat16", "tflops": matmul_tflops(args.n)}
        elif args.cmd == "data":
            result = time_data_load(args.path, args.cache_dir)
        elif args.cmd == "record":
            result = pipeline_record(args.call, args.config, args.runs, args.exit_code, args.seconds, args.compiled,
                                     args.fresh, args.note)
            write_json(result, args.out)
        else:
            result = summarize(args.out, args.runs, args.also)
            write_json(result, args.out / results_name(result))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    shown = {k: v for k, v in result.items() if k not in ("bench_rows", "pipeline")}  # in the file; stdout short
    print(json.dumps(shown, indent=2) if args.cmd in ("summarize", "record") else json.dumps(result))


if __name__ == "__main__":
    main()
