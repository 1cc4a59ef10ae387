"""python bench/slow_steps.py SECONDS ARGS...: `distill ARGS`, each training step followed by SECONDS of sleep.

For tests and the device preflight that must stop a run in the middle of an epoch with a signal: on tiny data
an epoch takes milliseconds, so the signal needs steps that last. The sleep goes through the loop's own step
hook (distill.engine.run.step_hook); distill itself reads no variable for it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's distill, installed or not
import distill.engine.run as run  # noqa: E402


def slowed(seconds: float):
    real = run.step_hook

    def step_hook(lead):
        on_step = real(lead)

        def step(step: int, steps: int) -> None:
            on_step(step, steps)
            time.sleep(seconds)

        return step

    return step_hook


if __name__ == "__main__":
    run.step_hook = slowed(float(sys.argv[1]))
    from distill.front.cli import main

    main(sys.argv[2:])
