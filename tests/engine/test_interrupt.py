"""Ctrl-C, SIGTERM and SIGKILL sent to real child processes: what is saved, what is printed, and how
the run continues. bench/slow_steps.py slows each step through the loop's step hook, so a signal reliably lands
mid-run."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import file_digest
from distill.engine.checkpoint import load_checkpoint
from distill.engine.signals import StopSignals
from runhelpers import REPO, child_env, run_args, spawn, temp_files, wait_for

STEPS = 5  # 42 training images (48 minus 6 for validation) in batches of 8


def interrupt(proc: subprocess.Popen, signum: int) -> str:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return err


def test_ctrl_c_saves_last_pt_and_the_printed_command_finishes_the_run(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = spawn(run_args("teach", tiny_data, out, 3), slow=0.2)
    wait_for(lambda: (out / "last.pt").exists(), proc)  # epoch 1 is saved: the child is now in epoch 2
    err = interrupt(proc, signal.SIGINT)
    assert proc.returncode == 130, err
    assert "SIGINT: finishing the current step" in err
    ck = load_checkpoint(out / "last.pt")
    assert 1 <= ck["epoch"] * STEPS + ck["step_in_epoch"] < 3 * STEPS  # stopped mid-run, position recorded
    command = re.search(r"Resume with: distill (.+?) \(plus", err)
    assert command, err
    result = cli(*command.group(1).split())  # exactly what the user is told to type
    assert result.code == 0, result.err
    assert load_checkpoint(out / "last.pt")["epoch"] == 3 and (out / "metrics.json").exists()


def test_sigterm_exits_143_with_a_loadable_checkpoint(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = spawn(run_args("teach", tiny_data, out, 3), slow=0.2)
    wait_for(lambda: (out / "last.pt").exists(), proc)
    err = interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Resume with" in err
    assert load_checkpoint(out / "last.pt")["epoch"] >= 1
    assert temp_files(out) == []


def test_second_signal_exits_at_once(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = spawn(run_args("teach", tiny_data, out, 3), slow=5)
    wait_for(lambda: (out / "config.json").exists(), proc)  # written just before the first step
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the child is inside its 5 s step: the first signal only asked it to stop there
    started = time.monotonic()
    err = interrupt(proc, signal.SIGINT)
    assert time.monotonic() - started < 2.5, "the second signal must not wait for the step to end"
    assert proc.returncode == 130 and "second signal: exiting now" in err, err
    assert not (out / "last.pt").exists() and temp_files(out) == []


SLOW_SAVE = textwrap.dedent("""
    import io, sys, time
    import torch
    from distill.engine import checkpoint

    real_save = torch.save

    def half_then_hang(obj, fh):  # a disk that stalls halfway through the temporary file
        buf = io.BytesIO()
        real_save(obj, buf)
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        fh.flush()
        print("half written", flush=True)
        time.sleep(120)

    torch.save = half_then_hang
    path = sys.argv[1]
    ck = torch.load(path, weights_only=True)
    checkpoint.save_atomic({**ck, "epoch": 99}, path)
""")


def test_sigkill_mid_save_keeps_the_previous_last_pt_and_the_next_run_cleans_up(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert cli(*run_args("teach", tiny_data, out, 1)).code == 0
    before = (out / "last.pt").read_bytes(), file_digest(out / "last.pt")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(out / "last.pt")], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half written", proc.communicate()
    assert len(temp_files(out)) == 1  # between the temporary file and the rename
    proc.kill()
    proc.wait(timeout=30)
    assert ((out / "last.pt").read_bytes(), file_digest(out / "last.pt")) == before
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    result = cli("teach", "--out", out, "--resume", "--epochs", "2")
    assert result.code == 0, result.err
    assert temp_files(out) == [] and load_checkpoint(out / "last.pt")["epoch"] == 2


# --- the test suite itself under SIGTERM -----------------------------------------------------------

SLOW_SESSION = textwrap.dedent("""
    import os
    from pathlib import Path

    import distill.engine.run as run
    from conftest import write_image_tree
    from runhelpers import run_args
    from slow_steps import slowed


    def test_slow_training_in_this_process(cli, tmp_path, monkeypatch):
        monkeypatch.setattr(run, "step_hook", slowed(0.2))
        cli(*run_args("teach", write_image_tree(tmp_path / "data"), os.environ["RUN_FOLDER"], 100))


    def test_after_it():
        Path(os.environ["REACHED"]).write_text("the session ran on")
""")


def test_sigterm_to_pytest_stops_the_session_while_a_test_trains_in_process(tmp_path):
    """A timeout's SIGTERM reaches distill's own handler when a test trains in pytest's process: the run stops
    and saves as usual, and then the session stops too instead of running the remaining tests."""
    (tmp_path / "test_slow.py").write_text(SLOW_SESSION)
    run, reached = tmp_path / "run", tmp_path / "reached"
    env = child_env(RUN_FOLDER=str(run), REACHED=str(reached),
                    PYTHONPATH=os.pathsep.join(map(str, (REPO, REPO / "tests", REPO / "bench"))))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                             "--rootdir", str(tmp_path), str(tmp_path / "test_slow.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (run / "config.json").exists(), proc)  # written just before the first step
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - started < 20, out
    assert proc.returncode == 143 and "SIGTERM: test session stopped" in out, out
    assert not reached.exists(), out
    assert (run / "last.pt").exists()  # distill still stopped gracefully first


def outer_handler(heard: list):
    def handler(signum, frame):
        heard.append(signum)
    return handler


@pytest.fixture
def outer_sigterm():
    """An embedding program's own SIGTERM handler, in place for the test; what it heard."""
    heard: list[int] = []
    handler = outer_handler(heard)
    previous = signal.signal(signal.SIGTERM, handler)
    yield handler, heard
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("ending", ["normal", "error", "SIGTERM", "SIGINT"])
def test_stop_signals_put_the_previous_handlers_back_whichever_way_the_block_ends(outer_sigterm, ending):
    handler, heard = outer_sigterm
    stop = StopSignals(announce=False)
    with contextlib.suppress(RuntimeError), stop:
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == stop._handle
        if ending == "error":
            raise RuntimeError("a failing run")
        if ending in ("SIGTERM", "SIGINT"):
            signal.raise_signal(signal.Signals[ending])
            assert stop.requested()  # recorded, not acted on: the loop stops at its next step
    assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # The program's own handler hears its signal once the run has stopped; Python's defaults stay out.
    assert heard == ([signal.SIGTERM] if ending == "SIGTERM" else [])


def test_stop_signals_that_cannot_take_every_signal_give_back_the_ones_taken(outer_sigterm, monkeypatch):
    real = signal.signal

    def refuse_sigterm(sig, handler):
        if sig == signal.SIGTERM and handler != outer_sigterm[0]:
            raise OSError("no")
        return real(sig, handler)

    with monkeypatch.context() as m, pytest.raises(OSError):
        m.setattr(signal, "signal", refuse_sigterm)
        with StopSignals():
            pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is outer_sigterm[0]
