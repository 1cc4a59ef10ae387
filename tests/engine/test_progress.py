"""Training progress in every environment (issue 17, items 15 and 19): a live bar where rich can draw one;
elsewhere (a pipe, a log file, TERM=dumb) a line with images/s and the time left every PROGRESS_EVERY
seconds. Either way, an estimate of the run's length after its first steps. The device is waited for only
when a figure is printed, never at every step."""

from __future__ import annotations

import re
import sys

import pytest

import distill.engine.log as runlog
from distill.engine.log import Pace, RunLogger
from runhelpers import Terminal, run_args, terminal_env


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_pace_estimates_after_a_few_steps_then_prints_a_line_every_30_seconds(monkeypatch):
    waits: list = []
    monkeypatch.setattr(runlog, "synchronize", waits.append)
    lines, clock = [], Clock()
    pace = Pace("run", lines.append, lines=True, clock=clock)
    pace.device, pace.images_per_step = "the device", 50.0
    total = 200
    for done in range(1, total + 1):
        clock.now += 20.0 if done == 1 else 2.0  # the first step pays for warm-up: not counted
        pace.on_step(total - done, f"step {done}/{total}")
    # 3 steps in 6 s after the first: 0.5 steps/s, 196 steps left = 392 s
    assert lines[0] == "run: about 7 min of training on this device (25 img/s, 196 steps to go)"
    assert lines[1] == "run step 19/200: 25 img/s, about 6 min left"  # 30 s later, 181 steps left
    assert len(lines) == 1 + (total - 4) // 15  # then every 15 steps (30 s), not at every step
    assert waits == ["the device"] * (1 + len(lines))  # for the first step to end, then per figure printed


def test_off_a_terminal_a_run_prints_its_estimate_and_progress_lines(cli, tiny_data, tmp_path, monkeypatch):
    terminal_env(monkeypatch, "xterm-256color")  # stdout is captured: not a terminal whatever TERM says
    monkeypatch.setattr(runlog, "PROGRESS_EVERY", 0.0)  # a line at every step after the estimate
    monkeypatch.setattr(runlog, "ESTIMATE_SECONDS", 0.0)
    args = [a for a in run_args("teach", tiny_data, tmp_path / "run", 2) if a != "--quiet"]
    result = cli(*args)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    # 5 steps per epoch: measured over steps 2-4, 6 steps to go; then one line after each of them
    estimate = r"run: about [\d.]+ (s|min|h) of training on this device \([\d,]+ img/s, 6 steps to go\)"
    assert re.fullmatch(estimate, lines[0])
    line = re.compile(r"run epoch \d/2 step \d/5: [\d,]+ img/s, about [\d.]+ (s|min|h) left")
    progress = [text for text in lines if line.fullmatch(text)]
    assert len(progress) == 6 and progress[-1].startswith("run epoch 2/2 step 5/5: ")
    quiet = cli(*run_args("teach", tiny_data, tmp_path / "quiet", 1))
    assert "on this device" not in quiet.out and "img/s, about" not in quiet.out


@pytest.mark.parametrize("term", ["xterm-256color", "dumb"])
def test_progress_shows_on_every_terminal(monkeypatch, tmp_path, term):
    """TERM=dumb (Emacs shells, some CI runners with a pty): rich draws no live bar there, so lines instead."""
    terminal_env(monkeypatch, term)
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(runlog, "PROGRESS_EVERY", 0.0)
    monkeypatch.setattr(runlog, "ESTIMATE_SECONDS", 0.0)
    logger = RunLogger(tmp_path, "run", epochs=1, quiet=False, purge_step=None)
    logger.start_epoch(0, 10, images=80)
    for step in range(1, 11):
        logger.step(step, 10)
    logger.close()
    shown = screen.getvalue()
    assert "of training on this device (" in shown
    if term == "dumb":
        assert "run epoch 1/1 step 10/10: " in shown and "\x1b" not in shown  # plain lines, no escape codes
    else:
        assert "run epoch 1/1" in shown and "10/10" in shown and "img/s, about" not in shown  # the bar
