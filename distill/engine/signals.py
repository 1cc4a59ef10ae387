"""Graceful stop on Ctrl-C / SIGTERM: the first signal asks the loop to stop at the next step
boundary (it then saves a resumable checkpoint); a second one exits at once. Atomic checkpoint
writes make the hard exit safe: last.pt is always a complete file.

The handlers that were there before are put back on exit, whichever way the block ends. One that a
program embedding distill installed itself (a test runner, a job scheduler) hears the signal too,
once the run has stopped and saved: the process it belongs to still stops. Python's defaults are not
called (SIG_DFL would kill the process before distill says how to resume, default_int_handler would
raise KeyboardInterrupt): there distill's own message and exit code 130/143 stand for them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

PYTHON_DEFAULTS = (signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler)


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
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers
        try:
            for sig in self.SIGNALS:
                # None: a handler set outside Python, which signal.signal could not put back; leave it in charge.
                if signal.getsignal(sig) is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc) -> None:
        outer = self._previous.get(self.signum)
        self._restore()
        if self.signum is not None and callable(outer) and outer not in PYTHON_DEFAULTS:
            outer(self.signum, None)  # after the stop and the save; whatever it raises ends the block

    def _restore(self) -> None:
        while self._previous:
            sig, handler = self._previous.popitem()
            signal.signal(sig, handler)
