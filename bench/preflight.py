#!/usr/bin/env python3
"""The device preflight (issue 16): every GPU code path of distill once, at tiny size, in about a minute,
before the headline pipeline spends the rest of the device call.

    python bench/preflight.py --device cuda --out DIR --json preflight.json
    python bench/preflight.py --device cpu --no-compile --out DIR         # the same steps on the CPU
    python bench/preflight.py --verdict preflight.json                     # the headline's --set flags
    python bench/preflight.py --status preflight.json fm                   # one step's status

Each step is one or more `python -m distill ...` processes on tiny synthetic data that the preflight writes
itself (3 classes x 64 training and 16 test PNG images, 32x32). Steps run in parallel, each with its own
empty inductor cache (so the preflight warms nothing the headline compiles) and a hard timeout:

  teacher   distill teach: torchvision resnet18 (CIFAR stem), strong augmentation, compiled in
            reduce-overhead mode (CUDA graphs) for a few steps, then tested
  group     distill pipeline: a tiny teacher, then two students (kd; dkd mixing its own batches, so the teacher
            runs twice a step) and a baseline trained together, compiled, behind the compiled teacher
  feature   distill pipeline: a fitnet student (features), compiled, behind the compiled teacher
  resume    distill teach stopped by SIGINT after its first checkpoint, then --resume to the end
  deploy    distill export (onnx) and distill predict on the device of a checkpoint trained there
  fm        when configs/pipeline/cifar10_fm.toml exists: that pipeline at tiny size, uncompiled

One line per step: `preflight <step>: ok in 12.3 s` or `preflight <step>: FAILED (exit N) after 8.1 s: <the
error's last line>` (then the tail of its log on stderr). A compiled step that fails is run once more
uncompiled: when that passes, the compiler is to blame, and the verdict is that the headline runs with
--set compile=false; any other failure leaves the headline compiled. Exit code 0 only if every step passed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's distill, installed or not
from distill.synthetic import CLASSES, write_image_tree  # noqa: E402  (torch-free: the preflight stays light)

REPO = Path(__file__).resolve().parents[1]
FM_CONFIG = REPO / "configs" / "pipeline" / "cifar10_fm.toml"
FALLBACK = ["--set", "compile=false"]  # compile_teacher unset follows the students: off too
TAIL_LINES = 15  # of a failed command's log, printed on stderr (steps.log on the device)


class StepFailed(Exception):
    """A step's command failed, timed out or left a wrong result: `how` for the line, `error` its last line."""

    def __init__(self, how: str, error: str, exit_code: int | None = None, log: Path | None = None):
        super().__init__(error)
        self.how, self.error, self.exit_code, self.log = how, error, exit_code, log


@dataclass
class Step:
    name: str
    compiled: bool  # it exercises torch.compile: a failure gets an uncompiled retry
    body: Callable[[Context], None]


@dataclass
class Options:
    device: str
    compile: bool
    out: Path
    batch_size: int
    step_timeout: float
    retry_timeout: float
    train_per_class: int
    test_per_class: int


class Processes:
    """Every child process group still running, so a stop (SIGTERM from gpu.sh's timeout) ends them all."""

    def __init__(self):
        self.lock, self.running, self.stopping = threading.Lock(), set(), False

    def add(self, proc: subprocess.Popen) -> None:
        with self.lock:
            if self.stopping:
                kill_group(proc)
            self.running.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.running.discard(proc)

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in self.running:
                kill_group(proc)


PROCESSES = Processes()


def kill_group(proc: subprocess.Popen) -> None:
    """The process and what it started (inductor's compile workers), which share its session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def python_command() -> list[str]:
    """This interpreter, with -S when it runs with -S (the CPU smoke hides the editable install that way)."""
    return [sys.executable, *(["-S"] if sys.flags.no_site else [])]


@dataclass
class Context:
    """One attempt at one step: its folder, environment, deadline and the commands it ran."""

    name: str
    folder: Path
    data: Path
    opts: Options
    compile: bool
    deadline: float
    env: dict = field(default_factory=dict)
    count: int = 0

    def start(self, *args: str, slow: float = 0.0) -> tuple[subprocess.Popen, Path]:
        """`python -m distill ARGS`; with `slow`, each training step sleeps that long (bench/slow_steps.py)."""
        self.count += 1
        log = self.folder / f"{self.count:02d}-{args[0]}.log"
        entry = [str(REPO / "bench" / "slow_steps.py"), str(slow)] if slow else ["-m", "distill"]
        with open(log, "w") as fh:
            fh.write("$ python " + " ".join([*entry, *map(str, args)]) + "\n")
            fh.flush()
            proc = subprocess.Popen([*python_command(), *entry, *map(str, args)], stdout=fh,
                                    stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True, cwd=REPO)  # where the headline runs
        PROCESSES.add(proc)
        return proc, log

    def wait(self, proc: subprocess.Popen, log: Path, expect: int = 0) -> None:
        try:
            code = proc.wait(timeout=max(self.deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
            raise StepFailed("timed out", last_line(log), None, log) from None
        finally:
            PROCESSES.discard(proc)
        if PROCESSES.stopping:
            raise StepFailed("stopped", "the preflight was stopped", code, log)
        if code != expect:
            raise StepFailed(f"exit {code}", last_line(log), code, log)

    def distill(self, *args: str, expect: int = 0) -> Path:
        proc, log = self.start(*args)
        self.wait(proc, log, expect)
        return log

    def compile_options(self) -> list[str]:
        return ["--compile", "--compile-mode", "reduce-overhead"] if self.compile else ["--no-compile"]

    def common(self) -> list[str]:
        """What every run here shares: the tiny data, the device, all images for training (as the headline)."""
        return ["--data", str(self.data), "--device", self.opts.device, "--val-size", "0",
                "--batch-size", str(self.opts.batch_size), "--quiet"]


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def require(condition: bool, error: str) -> None:
    if not condition:
        raise StepFailed("check", error)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        raise StepFailed("check", f"{path} is missing or unreadable") from None
    return value if isinstance(value, dict) else {}


# ---------------------------------------------------------------------------------------------------------
# The steps


def teacher_step(ctx: Context) -> None:
    out = ctx.folder / "run"
    ctx.distill("teach", *ctx.common(), "--out", out, "--arch", "resnet18", "--stem", "cifar", "--augment", "strong",
                "--epochs", "2", "--lr", "0.05", "--tta", *ctx.compile_options())
    metrics = read_json(out / "metrics.json")
    require(metrics.get("test_accuracy") is not None and metrics.get("epochs") == 2,
            f"{out / 'metrics.json'} lacks the test accuracy of 2 epochs")


def pipeline_toml(ctx: Context, students: list[tuple[str, str, str]], baselines: bool) -> str:
    """A pipeline with a tiny uncompiled teacher (torchvision, as the headline's) and compiled students, each
    (arch, method, its own --mix or "none")."""
    flag = "true" if ctx.compile else "false"
    head = (f"baselines = {str(baselines).lower()}\ntrain_together = true\n\n[common]\nepochs = 2\nlr = 0.05\n"
            f"tta = true\n\n[teacher]\narch = \"resnet18\"\nstem = \"cifar\"\nepochs = 1\ncompile = false\n")
    tables = [f"\n[[students]]\narch = \"{arch}\"\nmethod = \"{method}\"\nmix = \"{mix}\"\ncompile = {flag}\n"
              f"compile_teacher = {flag}\n" for arch, method, mix in students]
    return head + "".join(tables)


def run_pipeline(ctx: Context, toml: str, *extra: str) -> dict:
    config, out = ctx.folder / "pipeline.toml", ctx.folder / "runs"
    config.write_text(toml)
    ctx.distill("pipeline", "--config", config, "--data", str(ctx.data), "--out", out, "--device", ctx.opts.device,
                "--quiet", "--set", f"batch_size={ctx.opts.batch_size}", "--set", "val_size=0", *extra)
    report = read_json(out / "pipeline.json")
    require(report.get("finished") is True, f"{out / 'pipeline.json'} does not say finished")
    return report


def group_step(ctx: Context) -> None:
    # The dkd student mixes its own batches (function matching): two teacher forwards a step, both compiled.
    students = [("resnet8", "kd", "none"), ("resnet8", "dkd", "mixup=0.2,cutmix=1.0")]
    report = run_pipeline(ctx, pipeline_toml(ctx, students, baselines=True))
    together = [stage.get("trained_together", []) for stage in report["stages"][1:]]
    require(len(together) == 3 and all(len(names) == 3 for names in together),
            f"the two students and the baseline did not train as one group: {together}")


def feature_step(ctx: Context) -> None:
    report = run_pipeline(ctx, pipeline_toml(ctx, [("resnet8", "fitnet", "none")], baselines=False))
    student = ctx.folder / "runs" / report["stages"][-1]["name"] / "metrics.json"
    require(read_json(student).get("method") == "fitnet", f"{student} is not a finished fitnet run")


def resume_step(ctx: Context) -> None:
    out = ctx.folder / "run"
    args = ["teach", *ctx.common(), "--out", out, "--arch", "resnet8", "--epochs", "3", "--lr", "0.05",
            *ctx.compile_options()]
    proc, log = ctx.start(*args, slow=0.2)  # each step then lasts, so the signal lands mid-run
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < ctx.deadline:
        time.sleep(0.05)  # epoch 1 is saved: the run is now in epoch 2
    proc.send_signal(signal.SIGINT)
    ctx.wait(proc, log, expect=130)
    ctx.distill("teach", "--out", out, "--resume", "--quiet", "--device", ctx.opts.device, *ctx.compile_options())
    metrics = read_json(out / "metrics.json")
    require(metrics.get("epochs") == 3, f"the resumed run ended at epoch {metrics.get('epochs')}, not 3")


def deploy_step(ctx: Context) -> None:
    out = ctx.folder / "run"
    ctx.distill("teach", *ctx.common(), "--out", out, "--arch", "resnet8", "--epochs", "1", "--no-compile")
    ctx.distill("export", out / "best.pt", "--format", "onnx", "--out", ctx.folder / "model.onnx")
    log = ctx.distill("predict", out / "best.pt", ctx.data / "test", "--device", ctx.opts.device, "--json",
                      "--top-k", "1")
    rows = [line for line in log.read_text().splitlines() if line.startswith("{")]
    expected = len(CLASSES) * ctx.opts.test_per_class
    require(len(rows) == expected, f"predict classified {len(rows)} of {expected} test images")


def fm_step(ctx: Context) -> None:
    """The function-matching pipeline as the second call runs it, at tiny size and uncompiled."""
    out = ctx.folder / "runs"
    ctx.distill("pipeline", "--config", FM_CONFIG, "--data", str(ctx.data), "--out", out, "--device",
                ctx.opts.device, "--quiet", "--set", "epochs=1", "--set", f"batch_size={ctx.opts.batch_size}",
                "--set", "val_size=0", "--set", "compile=false")
    require(read_json(out / "pipeline.json").get("finished") is True, f"{out / 'pipeline.json'} does not say finished")


def all_steps() -> list[Step]:
    steps = [Step("teacher", True, teacher_step), Step("group", True, group_step),
             Step("feature", True, feature_step), Step("resume", True, resume_step),
             Step("deploy", False, deploy_step)]
    return steps + ([Step("fm", False, fm_step)] if FM_CONFIG.is_file() else [])


# ---------------------------------------------------------------------------------------------------------
# Running them


def step_env(folder: Path, threads: int) -> dict:
    """Its own empty caches: a cold compile as the headline's, and nothing of it left for the headline."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", DISTILL_CACHE=str(folder / "cache"),
               TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"), TRITON_CACHE_DIR=str(folder / "triton"))
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))  # parallel steps share the cores
    return env


def attempt(step: Step, opts: Options, data: Path, compile: bool, timeout: float, threads: int) -> dict:
    """Run one step once; its result as a dict (status ok/failed, seconds, exit code, error, log)."""
    retry = step.compiled and opts.compile and not compile
    folder = opts.out / (f"{step.name}-uncompiled" if retry else step.name)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ctx = Context(step.name, folder, data, opts, compile, started + timeout, step_env(folder, threads))
    result = {"status": "ok", "how": None, "exit_code": 0, "error": None, "log": None}
    try:
        step.body(ctx)
    except StepFailed as failed:
        result = {"status": "failed", "how": failed.how, "exit_code": failed.exit_code, "error": failed.error,
                  "log": str(failed.log) if failed.log else None}
    except Exception as exc:  # noqa: BLE001 - a bug here must cost one step, not the preflight
        result = {"status": "failed", "how": "preflight error", "exit_code": None,
                  "error": f"{type(exc).__name__}: {exc}", "log": None}
    return {**result, "seconds": round(time.monotonic() - started, 1)}


def line_of(name: str, result: dict) -> str:
    if result["status"] == "ok":
        return f"preflight {name}: ok in {result['seconds']:.1f} s"
    return f"preflight {name}: FAILED ({result['how']}) after {result['seconds']:.1f} s: {result['error']}"


class Report:
    """The results so far, printed a line at a time and written to the JSON file after every step."""

    def __init__(self, opts: Options, json_path: Path | None, steps: list[Step]):
        self.opts, self.json_path, self.lock = opts, json_path, threading.Lock()
        self.started, self.clock = datetime.datetime.now(datetime.timezone.utc), time.monotonic()
        self.results: dict[str, dict] = {s.name: {"name": s.name, "compiled": s.compiled and opts.compile,
                                                  "status": "not run"} for s in steps}

    def record(self, name: str, result: dict, retry: bool = False) -> None:
        with self.lock:
            if retry:
                self.results[name]["uncompiled"] = result
                print(line_of(f"{name} (uncompiled retry)", result), flush=True)
            else:
                self.results[name].update(result, uncompiled=None)
                print(line_of(name, result), flush=True)
            if result["status"] != "ok" and result["log"]:
                tail = Path(result["log"]).read_text(errors="replace").splitlines()[-TAIL_LINES:]
                print("\n".join(f"    {line}" for line in tail), file=sys.stderr, flush=True)
            self.write()

    def summary(self) -> dict:
        steps = list(self.results.values())
        compile_ok, reason = verdict(steps)
        return {"device": self.opts.device, "compile": self.opts.compile, "date": self.started.isoformat(
            timespec="seconds"), "total_seconds": round(time.monotonic() - self.clock, 1),
            "passed": all(s["status"] == "ok" for s in steps), "headline_compile": compile_ok, "verdict": reason,
            "steps": steps}

    def write(self) -> None:
        if self.json_path is None:
            return
        from distill.atomic import write_atomic
        from distill.errors import UserError

        text = json.dumps(self.summary(), indent=2).encode()
        write_atomic(self.json_path, lambda fh: fh.write(text),
                     lambda err: UserError(f"cannot write {self.json_path} ({err.strerror}): choose another --json"))


def verdict(steps: list[dict]) -> tuple[bool | None, str]:
    """Whether the headline runs compiled, and why: not when a compiled step failed where its uncompiled
    retry passed (the compiler is to blame); a step failing either way is no reason to lose compile's speed,
    nor is a compiled step that only ran out of time (six cold compiles share the CPU: slow is not broken)."""
    compiled = [s for s in steps if s.get("compiled")]
    if not compiled:
        return None, "no compiled step ran: the headline keeps its config's compile setting"
    blamed = [s["name"] for s in compiled if s.get("status") not in ("ok", "not run") and s.get("how") != "timed out"
              and (s.get("uncompiled") or {}).get("status") == "ok"]
    if blamed:
        return False, (f"compiled {', '.join(blamed)} failed and passed uncompiled: the headline runs with "
                       f"{' '.join(FALLBACK)}")
    failed = [s["name"] for s in compiled if s.get("status") != "ok"]
    if failed:
        return True, (f"compiled {', '.join(failed)} did not pass, but not for want of compile (broken either way, "
                      f"or out of time): the headline runs compiled")
    return True, "every compiled step passed: the headline runs compiled"


def run_step(step: Step, opts: Options, data: Path, report: Report, threads: int) -> None:
    result = attempt(step, opts, data, opts.compile and step.compiled, opts.step_timeout, threads)
    report.record(step.name, result)
    if result["status"] != "ok" and opts.compile and step.compiled and not PROCESSES.stopping:
        report.record(step.name, attempt(step, opts, data, False, opts.retry_timeout, threads), retry=True)


def run_all(steps: list[Step], opts: Options, json_path: Path | None) -> dict:
    """Every step in parallel; returns the summary (also written to json_path after each step)."""
    opts.out.mkdir(parents=True, exist_ok=True)
    data = write_image_tree(opts.out / "data", opts.train_per_class, opts.test_per_class, size=32)
    report = Report(opts, json_path, steps)
    threads = max(1, (os.cpu_count() or 1) // max(1, len(steps)))
    with ThreadPoolExecutor(max_workers=max(1, len(steps))) as pool:
        for future in [pool.submit(run_step, step, opts, data, report, threads) for step in steps]:
            future.result()
    summary = report.summary()
    report.write()
    ok = sum(s["status"] == "ok" for s in summary["steps"])
    print(f"preflight: {ok} of {len(steps)} steps ok in {summary['total_seconds']:.1f} s; {summary['verdict']}",
          flush=True)
    return summary


def print_verdict(path: Path) -> None:
    """The headline's extra flags on stdout (nothing, or --set compile=false), the reason on stderr."""
    try:
        summary = json.loads(path.read_text())
        compile_ok, reason = verdict(summary["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        print(f"preflight verdict: no readable result in {path}: the headline keeps its config's compile setting",
              file=sys.stderr)
        return
    print(f"preflight verdict: {reason}", file=sys.stderr)
    if compile_ok is False:
        print(" ".join(FALLBACK))


def print_status(path: Path, name: str) -> None:
    """One step's status in a result file: ok, failed, not run; absent when the file or the step is missing."""
    try:
        steps = {s["name"]: s["status"] for s in json.loads(path.read_text())["steps"]}
    except (OSError, ValueError, KeyError, TypeError):
        steps = {}
    print(steps.get(name, "absent"))


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    ap = argparse.ArgumentParser(prog="python bench/preflight.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="every step uncompiled (CPU tests)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a new folder under /tmp)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here (after every step)")
    ap.add_argument("--only", action="append", default=[], help="run only this step (repeatable)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-per-class", type=int, default=64)
    ap.add_argument("--test-per-class", type=int, default=16)
    ap.add_argument("--step-timeout", type=float, default=None, help="seconds per step (default 120 on cuda, 600 on cpu)")
    ap.add_argument("--retry-timeout", type=float, default=None, help="seconds for an uncompiled retry (default 60)")
    ap.add_argument("--verdict", type=Path, default=None, help="print the headline's --set flags from this result file")
    ap.add_argument("--status", nargs=2, metavar=("FILE", "STEP"), default=None,
                    help="print one step's status in a result file (ok, failed, not run, absent)")
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    out = args.out or Path(os.environ.get("TMPDIR", "/tmp")) / f"distill-preflight-{os.getpid()}"
    opts = Options(args.device, args.compile, out.absolute(), args.batch_size,
                   args.step_timeout or (120.0 if gpu else 600.0), args.retry_timeout or (60.0 if gpu else 600.0),
                   args.train_per_class, args.test_per_class)
    return args, opts


def main(argv: list[str] | None = None) -> int:
    args, opts = parse(argv)
    if args.verdict or args.status:
        print_verdict(args.verdict) if args.verdict else print_status(Path(args.status[0]), args.status[1])
        return 0
    steps = [s for s in all_steps() if not args.only or s.name in args.only]
    unknown = sorted(set(args.only) - {s.name for s in all_steps()})
    if unknown or not steps:
        print(f"preflight: unknown step '{(unknown or [''])[0]}': choose from "
              f"{', '.join(s.name for s in all_steps())}", file=sys.stderr)
        return 2
    if not FM_CONFIG.is_file():
        print(f"preflight fm: not run ({FM_CONFIG.relative_to(REPO)} does not exist)", flush=True)

    def stop(signum, frame):  # gpu.sh's timeout: end every child, keep what was written
        PROCESSES.stop_all()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    summary = run_all(steps, opts, args.json)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
