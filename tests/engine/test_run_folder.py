"""A run folder is never shared, mixed or left half-replaced: the lock, forced restarts, refusals that
write nothing, unwritable places, and checkpoints whose metadata was edited (issue 11)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import shutil

import pytest
import torch

import distill.engine.run as run_mod
from distill.engine.checkpoint import load_checkpoint
from runhelpers import assert_one_line_error, run_args, spawn, wait_for

RESULTS = ("last.pt", "best.pt", "metrics.json", "predictions.pt", "config.json")


def finished(cli, data, out, *extra):
    assert cli(*run_args("teach", data, out, 1, *extra)).code == 0
    return {name: (out / name).read_bytes() for name in RESULTS}


def test_a_second_process_on_a_live_run_folder_is_refused_and_a_dead_ones_lock_blocks_nothing(cli, tiny_data,
                                                                                              tmp_path):
    out = tmp_path / "run"
    proc = spawn(run_args("teach", tiny_data, out, 3), slow=0.3)
    try:
        wait_for(lambda: (out / "config.json").exists(), proc)
        for extra in ((), ("--force",)):
            assert_one_line_error(cli(*run_args("teach", tiny_data, out, 3, *extra)), "in use by another distill")
        wait_for(lambda: (out / "last.pt").exists(), proc)
        assert_one_line_error(cli("teach", "--out", out, "--resume"), "in use by another distill process")
    finally:
        proc.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel drops it
        proc.wait(timeout=60)
    assert (out / ".lock").exists()
    result = cli("teach", "--out", out, "--resume")
    assert result.code == 0, result.err
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


def test_under_torchrun_only_rank_0_probes_the_lock(tmp_path, monkeypatch):
    """Ranks check the folder at the same moment: a rank > 0 whose probe met rank 0's (or rank 0's real lock)
    refused the run as "in use by another distill process" now and then (a flaky torchrun resume)."""
    from distill.engine.folder import RunLock, check_out
    from distill.front import config as C

    out = tmp_path / "run"
    out.mkdir()
    cfg = C.resolve(C.TeachConfig, {}, {"out": str(out), "device": "cpu"})
    held = RunLock(out)  # rank 0's lock (flock: a second open file conflicts even in this process)
    try:
        monkeypatch.setenv("RANK", "1")
        assert check_out(cfg) == out
        for rank in ("0", None):
            monkeypatch.setenv("RANK", rank) if rank else monkeypatch.delenv("RANK")
            with pytest.raises(Exception, match="in use by another distill process"):
                check_out(cfg)
    finally:
        held.release()


def test_a_forced_restart_removes_the_old_results_before_it_writes_anything(cli, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    finished(cli, tiny_data, out)
    (out / "events.out.tfevents.1.old.0").write_bytes(b"old curves")

    def crash(*args, **kwargs):  # the restart dies before its first checkpoint
        raise RuntimeError("power cut")

    monkeypatch.setattr(run_mod, "train_one_epoch", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        cli(*run_args("teach", tiny_data, out, 1, "--force"))
    left = {p.name for p in out.iterdir()}
    assert not left & {"last.pt", "best.pt", "metrics.json", "predictions.pt", "events.out.tfevents.1.old.0"}
    # Nothing to resume, nothing to report: the new config.json alone says a run started here.
    assert_one_line_error(cli("teach", "--out", out, "--resume"), "nothing to resume")


def test_a_folder_stopped_before_its_first_checkpoint_starts_over_without_force(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # what a run that died in its first epoch leaves
    result = cli(*run_args("teach", tiny_data, out, 1))
    assert result.code == 0, result.err  # no longer "add --resume" <-> "nothing to resume" ping-pong
    assert json.loads((out / "config.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("args", [("--arch", "resnet9"), ("--data", "/no/such/data"), ("--teacher", "/no/t.pt")])
def test_a_refused_command_leaves_no_run_folder(cli, tiny_data, tmp_path, args):
    out = tmp_path / "never"
    command = "student" if args[0] == "--teacher" else "teach"
    result = cli(*run_args(command, tiny_data, out, 1, *args))
    assert result.code == 2 and "Traceback" not in result.err
    assert not out.exists()


def test_out_that_is_a_file_and_an_unwritable_tensorboard_folder_are_one_line(cli, tiny_data, tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_one_line_error(cli(*run_args("teach", tiny_data, a_file, 1)), "is a file, not a folder")

    import distill.engine.log as runlog

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runlog, "SummaryWriter", read_only)  # as root, chmod would not stop us: simulate it
    out = tmp_path / "ro"
    assert_one_line_error(cli(*run_args("teach", tiny_data, out, 1)), f"cannot write TensorBoard events in {out}",
                          "Permission denied")


def test_the_resume_command_is_quoted_for_a_shell(cli, tiny_data, tmp_path):
    from distill.engine.folder import resume_command

    out = tmp_path / "my runs" / "teacher"
    assert resume_command("teach", out) == f"distill teach --out {shlex.quote(str(out))} --resume"
    assert shlex.split(resume_command("teach", out))[3] == str(out)


def test_quiet_still_prints_the_final_result(cli, tiny_data, tmp_path):
    result = cli(*run_args("teach", tiny_data, tmp_path / "run", 1))  # run_args passes --quiet
    assert result.code == 0 and result.out.strip().endswith("metrics.json)")
    assert "test accuracy" in result.out and "epoch 1/1" not in result.out


def edited(ck_path, change) -> None:
    ck = torch.load(ck_path, weights_only=True)
    change(ck)
    torch.save(ck, ck_path)


@pytest.mark.parametrize(("change", "needle"), [
    (lambda ck: ck["spec"].pop("family"), "no family"),
    (lambda ck: ck.update(normalization={}), "normalization"),
    (lambda ck: ck["normalization"].update(std=[0.2, 0.0, 0.2]), "normalization"),
    (lambda ck: ck["spec"].update(input_size=0), "input size 0"),
    (lambda ck: ck.update(classes=["only"]), "class names"),
])
def test_edited_checkpoint_metadata_is_refused_in_one_line(cli, tiny_data, tmp_path, change, needle):
    out = tmp_path / "run"
    finished(cli, tiny_data, out)
    edited(out / "best.pt", change)
    assert_one_line_error(cli("evaluate", out / "best.pt", "--device", "cpu"), "damaged metadata", needle)
    assert_one_line_error(cli(*run_args("student", tiny_data, tmp_path / "s", 1, "--teacher", out / "best.pt",
                                        "--any-teacher")), "damaged metadata", needle)


def test_best_pt_copied_over_last_pt_cannot_be_resumed_and_says_why(cli, tiny_data, tmp_path):
    out = tmp_path / "run"
    finished(cli, tiny_data, out)
    (out / "metrics.json").unlink()
    shutil.copy(out / "best.pt", out / "last.pt")
    before = os.stat(out / "last.pt").st_mtime_ns
    assert_one_line_error(cli("teach", "--out", out, "--resume"), "cannot be resumed", "copy of best.pt",
                          "--force")
    assert os.stat(out / "last.pt").st_mtime_ns == before


def test_a_run_started_with_a_relative_data_path_resumes_from_another_directory(cli, tiny_data, tmp_path,
                                                                                monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(tiny_data.parent)
    args = run_args("teach", tiny_data.name, out, 2)  # --data data, relative to here
    with monkeypatch.context() as m:
        from runhelpers import signal_after_steps

        signal_after_steps(m, 3, signal.SIGINT)
        assert cli(*args).code == 130
    assert json.loads((out / "config.json").read_text())["data"] == str(tiny_data.resolve())
    monkeypatch.chdir(tmp_path.parent)  # elsewhere: "data" means nothing here
    result = cli("teach", "--out", out, "--resume")
    assert result.code == 0, result.err
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def test_a_hand_edited_config_json_before_resume_is_one_line(cli, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        from runhelpers import signal_after_steps

        signal_after_steps(m, 3, signal.SIGINT)
        assert cli(*run_args("teach", tiny_data, out, 2)).code == 130
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "epochs": "ten"}))
    assert_one_line_error(cli("teach", "--out", out, "--resume"), "config.json: 'epochs' must be int, got str 'ten'")
    (out / "config.json").write_text("{not json")
    assert_one_line_error(cli("teach", "--out", out, "--resume"), "config.json is unreadable")


def test_a_full_disk_at_the_first_save_keeps_best_pt_and_a_plain_rerun_does_not_delete_it(cli, tiny_data, tmp_path,
                                                                                           monkeypatch):
    import errno

    from distill import atomic

    out, real_replace = tmp_path / "run", atomic.os.replace

    def disk_fills_at_last_pt(src, dst):
        if str(dst).endswith("last.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(atomic.os, "replace", disk_fills_at_last_pt)
        assert_one_line_error(cli(*run_args("teach", tiny_data, out, 1)), "No space left on device")
    best = (out / "best.pt").read_bytes()
    assert not (out / "last.pt").exists()
    assert_one_line_error(cli(*run_args("teach", tiny_data, out, 1)), "already holds a run")
    assert_one_line_error(cli("teach", "--out", out, "--resume"), "holds best.pt but no last.pt")
    assert (out / "best.pt").read_bytes() == best  # neither refusal touched it
    assert cli(*run_args("teach", tiny_data, out, 1, "--force")).code == 0  # the user's explicit choice
