"""Shared fixtures: tiny synthetic image-folder data sets and an in-process CLI runner."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from distill.front.cli import main
from distill.synthetic import CLASSES, write_image_tree  # noqa: F401  (tests import both from here)
from runhelpers import RICH_ENV


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_image_tree(tmp_path / "data")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_the_session(signum, frame) -> None:
    """SIGTERM (a timeout, a cancelled CI job) ends the whole session, not only the test that runs: distill's
    StopSignals, in charge while a test trains in this process, passes the signal on here once it has stopped."""
    if _stop_the_session.asked:
        os._exit(128 + signum)  # a second SIGTERM: at once
    _stop_the_session.asked = True
    pytest.exit(f"{signal.Signals(signum).name}: test session stopped", returncode=128 + signum)


_stop_the_session.asked = False


def pytest_configure(config) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_the_session)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Every test leaves SIGINT and SIGTERM as it found them (distill run in-process installs its own handlers
    and must put the previous ones back); one that does not is put right and fails."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    yield
    left = [sig.name for sig, handler in before.items() if signal.getsignal(sig) is not handler]
    for sig, handler in before.items():
        signal.signal(sig, handler)
    assert not left, f"the test left its own handler for {', '.join(left)} instead of the previous one"


@pytest.fixture(autouse=True)
def _a_terminal_of_its_own(monkeypatch):
    """No test depends on the caller's terminal (TERM=dumb in Emacs, NO_COLOR, a narrow COLUMNS): rich reads these,
    so each test starts from none of them and 80 columns; a test about terminals sets its own (terminal_env)."""
    for name in RICH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "80")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Tests never touch the user's ~/.cache/distill."""
    monkeypatch.setenv("DISTILL_CACHE", str(tmp_path / "cache"))


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys):
    """Run `distill ...` in this process; returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def tiny_teach_args(data: Path, out: Path, *extra: str) -> list[str]:
    """A teacher run that takes a few seconds on one CPU core."""
    return ["teach", "--data", data, "--out", out, "--arch", "resnet18", "--stem", "imagenet",
            "--image-size", "16", "--val-size", "6", "--epochs", "2", "--batch-size", "8", "--lr", "0.05",
            "--device", "cpu", "--quiet", *extra]


def file_digest(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A resnet14 teacher of one epoch on the tiny image folder: (data folder, its best.pt)."""
    from distill.engine.run import train_run
    from distill.front import config as config

    root = tmp_path_factory.mktemp("methods")
    data = write_image_tree(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_CACHE", str(root / "cache"))
        train_run(config.resolve(config.TeachConfig, {}, {
            "data": str(data), "arch": "resnet14", "image_size": 16, "val_size": 6, "batch_size": 8, "epochs": 1,
            "device": "cpu", "quiet": True, "out": str(root / "teacher")}))
    return data, root / "teacher" / "best.pt"
