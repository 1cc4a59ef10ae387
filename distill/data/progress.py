"""Status lines and progress for slow data steps, on stderr so that --json stdout stays clean."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO

# Steps with fewer items than this finish in a few seconds: a bar would only flicker.
PROGRESS_MIN = 1000
PROGRESS_MIN_BYTES = 5_000_000  # unpacking a few MB takes about a second
PLAIN_STEP_PERCENT = 10  # without a terminal, one line per this much progress


def show(path: str | Path) -> str:
    """A path as the user reads it best: under the home folder as ~/..."""
    text, home = str(path), str(Path.home())
    return "~" + text[len(home):] if home != "/" and (text == home or text.startswith(home + "/")) else text


def size_text(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:,.0f} kB"


def live_bar_possible(stream: TextIO) -> bool:
    """Whether rich can redraw a bar in place on `stream`, as rich decides it: a terminal that is not dumb
    (TERM=dumb or unknown: Emacs shells, some CI runners with a pty, where rich draws nothing live), unless
    FORCE_COLOR, TTY_COMPATIBLE or TTY_INTERACTIVE say otherwise. Elsewhere progress is plain lines."""
    from rich.console import Console

    return Console(file=stream).is_interactive


def _ignore(_n: int) -> None:
    pass


class Reporter:
    """say(): status lines (silenced by quiet); warn(): always shown; steps(): progress."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self._stream = stream  # None: sys.stderr at the time of writing (tests swap it)

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextmanager
    def steps(self, what: str, total: int, in_bytes: bool = False) -> Iterator[Callable[[int], None]]:
        """Yields advance(n): a rich bar where one can be drawn, else a plain line every 10%."""
        if self.quiet or total < (PROGRESS_MIN_BYTES if in_bytes else PROGRESS_MIN):
            yield _ignore
        elif live_bar_possible(self.stream):
            yield from self._bar(what, total, in_bytes)
        else:
            yield from self._plain(what, total, in_bytes)

    def _bar(self, what: str, total: int, in_bytes: bool) -> Iterator[Callable[[int], None]]:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        amount = DownloadColumn() if in_bytes else MofNCompleteColumn()
        columns = (TextColumn(f"  {what}"), BarColumn(), amount, TimeRemainingColumn())
        with Progress(*columns, console=Console(file=self.stream), transient=True) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.advance(task, n)

    def _plain(self, what: str, total: int, in_bytes: bool) -> Iterator[Callable[[int], None]]:
        done, next_percent = 0, PLAIN_STEP_PERCENT

        def advance(n: int) -> None:
            nonlocal done, next_percent
            done += n
            percent = 100 * done // total
            if percent >= next_percent:
                amount = f"{size_text(done)} of {size_text(total)}" if in_bytes else f"{done:,} of {total:,}"
                self.say(f"  {what}: {amount} ({percent}%)")
                next_percent = (percent // PLAIN_STEP_PERCENT + 1) * PLAIN_STEP_PERCENT

        yield advance
