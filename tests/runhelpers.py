"""Helpers for the "runs that survive" tests: fast run arguments, real child processes, checkpoint comparison."""

from __future__ import annotations

import io
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import distill.engine.loop as train_mod

REPO = Path(__file__).resolve().parents[1]
# resnet8 at 16x16: a 48-image epoch (5 steps of 8) takes well under a second on one CPU core.
FAST = ["--arch", "resnet8", "--image-size", "16", "--val-size", "6", "--batch-size", "8", "--lr", "0.05",
        "--device", "cpu", "--quiet"]


# What rich reads from the environment to decide colours, width and whether it may redraw in place.
RICH_ENV = ("TERM", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def terminal_env(monkeypatch, term: str, columns: int = 100) -> None:
    """The test's own terminal settings, whatever the caller's shell has (TERM=dumb in Emacs, NO_COLOR, ...)."""
    for name in RICH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", term)
    monkeypatch.setenv("COLUMNS", str(columns))


class Terminal(io.StringIO):
    """A stream that says it is a terminal, and keeps what was written to it."""

    def isatty(self) -> bool:
        return True


def run_args(command: str, data: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    """`distill teach|student` on the tiny data set (conftest's tiny_data); later options win."""
    return [command, "--data", str(data), "--out", str(out), "--epochs", str(epochs), *FAST, *map(str, extra)]


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def spawn(args: list, env: dict[str, str] | None = None, launcher: list[str] | None = None,
          slow: float = 0.0) -> subprocess.Popen:
    """`python -m distill ARGS` (or `LAUNCHER -m distill ARGS`) as a real child process; with `slow`, each training
    step sleeps that long (bench/slow_steps.py), so that a signal reliably lands mid-epoch."""
    launcher = launcher or [sys.executable]
    entry = [str(REPO / "bench" / "slow_steps.py"), str(slow)] if slow else ["-m", "distill"]
    return subprocess.Popen([*launcher, *entry, *map(str, args)], cwd=REPO, env=env or child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 90) -> None:
    """Poll until `condition` holds; fail with the child's output if it exits or takes too long first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"condition not reached (exit {proc.returncode}):\n{out}\n{err}")
        time.sleep(0.05)


def signal_after_steps(monkeypatch, n_steps: int, signum: int = signal.SIGINT) -> None:
    """Deliver `signum` to this process right after training step `n_steps` of the next command: the
    real StopSignals handler sees it, as it would see a Ctrl-C."""
    real, count = train_mod.train_step, itertools.count(1)

    def step(*args, **kwargs):
        result = real(*args, **kwargs)
        if next(count) == n_steps:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(train_mod, "train_step", step)


def before_steps_from_epoch(monkeypatch, epoch: int, hook: Callable) -> None:
    """Call hook(loop) before every training step from epoch `epoch` (1-based) on."""
    real = train_mod.train_step

    def step(loop, positions, index):
        if index >= (epoch - 1) * loop.steps_per_epoch:
            hook(loop)
        return real(loop, positions, index)

    monkeypatch.setattr(train_mod, "train_step", step)


def assert_same(a, b, where: str = "checkpoint") -> None:
    """Bit-for-bit equality of nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def assert_one_line_error(result, *needles: str) -> None:
    """Exit 2 and one error line, last; before it at most the data loader's status line ("loading ..."),
    when the problem could only be seen in the data (its classes, its size)."""
    assert result.code == 2, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.err
    assert all(line.startswith("loading ") for line in lines[:-1]), result.err
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def record_groups(monkeypatch) -> list[list[str]]:
    """Make the pipeline record which stages each training call trains (one list of run folders per call)."""
    import distill.experiments.pipeline as pipeline_mod

    calls: list[list[str]] = []
    real_group = pipeline_mod.train_group

    def recorded_group(cfgs):
        calls.append([Path(cfg.out).name for cfg in cfgs])
        return real_group(cfgs)

    monkeypatch.setattr(pipeline_mod, "train_group", recorded_group)
    return calls
