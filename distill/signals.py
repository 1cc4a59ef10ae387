"""Graceful stop on Ctrl-C / SIGTERM: the first signal asks the loop to stop at the next step
boundary (it then saves a resumable checkpoint); a second one exits at once. Atomic checkpoint
writes make the hard exit safe: last.pt is always a complete file."""

from __future__ import annotations

import os
import signal
import sys
import threading


class StopSignals:
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce  # False on torchrun ranks other than 0: one message per run, not per process
        self._previous: dict = {}

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)  # 130 for SIGINT, 143 for SIGTERM

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            sys.stderr.write("second signal: exiting now (last.pt holds the last complete checkpoint)\n")
            os._exit(128 + signum)
        self.signum = signum
        if self.announce:
            sys.stderr.write(f"{signal.Signals(signum).name}: finishing the current step and saving last.pt "
                             f"(send it again to exit at once)\n")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
