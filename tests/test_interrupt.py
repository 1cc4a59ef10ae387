"""Ctrl-C, SIGTERM and SIGKILL sent to real child processes: what is saved, what is printed, and how
the run continues. DISTILL_TEST_STEP_SLEEP (read by distill/run.py's step hook) slows each step so a signal
reliably lands mid-run."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time

from conftest import file_digest
from distill.checkpoint import load_checkpoint
from runhelpers import REPO, child_env, run_args, spawn, temp_files, wait_for

STEPS = 5  # 42 training images (48 minus 6 for validation) in batches of 8


def interrupt(proc: subprocess.Popen, signum: int) -> str:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    return err


def test_ctrl_c_saves_last_pt_and_the_printed_command_finishes_the_run(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = spawn(run_args("teach", tiny_data, out, 3), child_env(DISTILL_TEST_STEP_SLEEP="0.2"))
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
    proc = spawn(run_args("teach", tiny_data, out, 3), child_env(DISTILL_TEST_STEP_SLEEP="0.2"))
    wait_for(lambda: (out / "last.pt").exists(), proc)
    err = interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Resume with" in err
    assert load_checkpoint(out / "last.pt")["epoch"] >= 1
    assert temp_files(out) == []


def test_second_signal_exits_at_once(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = spawn(run_args("teach", tiny_data, out, 3), child_env(DISTILL_TEST_STEP_SLEEP="5"))
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
    from distill import checkpoint

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
