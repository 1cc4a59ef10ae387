"""`--resume` continues a run exactly: bit-identical weights after interruptions, one TensorBoard curve,
a longer schedule when --epochs grows, and a one-line refusal when a setting that matters changed."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from conftest import file_digest
from distill.engine.checkpoint import load_checkpoint
from distill.engine.checks import check_resume
from distill.errors import UserError
from distill.front import config as C
from distill.engine.optim import lr_factor
from runhelpers import assert_one_line_error, assert_same, before_steps_from_epoch, run_args, signal_after_steps
from test_teach import scalars

STEPS = 5  # 42 training images in batches of 8
# Every random draw the recipe has: our crop/flip/mixup/cutmix on torch's RNG, kornia's jitter and
# erasing drawn on the CPU, plus the EMA and its warm-up counter.
RECIPE = ["--deterministic", "--augment", "default,color_jitter=0.2,cutout=0.5,mixup=0.2,cutmix=1.0"]
NOT_STATE = ("config", "wall_seconds", "train_seconds", "first_epoch_seconds")  # the command line and the clock differ


def test_interrupted_twice_and_resumed_equals_uninterrupted_bit_for_bit(cli, tiny_data, tmp_path, monkeypatch):
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    assert cli(*run_args("teach", tiny_data, whole, 3, *RECIPE)).code == 0
    # Stop at the end of epoch 1, then in the middle of epoch 3, then run to the end.
    for steps_this_time, where in ((STEPS, "after epoch 1"), (STEPS + 2, "epoch 3 step 2")):
        with monkeypatch.context() as m:
            signal_after_steps(m, steps_this_time, signal.SIGINT)
            resume = ["--resume"] if (pieces / "last.pt").exists() else []
            result = cli(*run_args("teach", tiny_data, pieces, 3, *RECIPE, *resume))
        assert result.code == 130 and f"interrupted ({where})" in result.err, result.err
    assert cli("teach", "--out", pieces, "--resume").code == 0

    a, b = (load_checkpoint(d / "last.pt") for d in (whole, pieces))
    assert_same({k: v for k, v in a.items() if k not in NOT_STATE}, {k: v for k, v in b.items() if k not in NOT_STATE})
    assert_same(load_checkpoint(whole / "best.pt")["model"], load_checkpoint(pieces / "best.pt")["model"])
    # One TensorBoard run, each epoch logged once although three processes wrote to it.
    steps = scalars(pieces)
    for tag in ("loss/train", "accuracy/train", "accuracy/val", "lr", "time/epoch_seconds"):
        assert steps[tag] == [1, 2, 3], (tag, steps[tag])
    assert steps["result/test_accuracy"] == [3]


def test_changed_settings_are_refused_in_one_line_and_more_epochs_extend_the_schedule(
        cli, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert cli(*run_args("teach", tiny_data, out, 2)).code == 0
    before = file_digest(out / "last.pt")

    moved = shutil.copytree(tiny_data, tmp_path / "moved")
    result = cli("teach", "--out", out, "--resume", "--arch", "resnet14", "--batch-size", "4", "--data", moved)
    assert_one_line_error(result, "arch: 'resnet8' -> 'resnet14'", "batch_size: 8 -> 4", f"-> '{moved}'")
    shutil.copytree(tiny_data / "train" / "boat", tiny_data / "train" / "dune")  # same path, a 4th class
    shutil.copytree(tiny_data / "test" / "boat", tiny_data / "test" / "dune")
    result = cli("teach", "--out", out, "--resume")
    assert_one_line_error(result, "classes: 3 [apple, boat, cloud] -> 4 [apple, boat, cloud, dune]")
    for split in ("train", "test"):
        shutil.rmtree(tiny_data / split / "dune")
    assert file_digest(out / "last.pt") == before  # refusals write nothing

    # A run records one recipe: a new peak --lr (or any other setting of the recipe) is refused.
    assert_one_line_error(cli("teach", "--out", out, "--resume", "--lr", "0.1", "--label-smoothing", "0.1"),
                          "lr: 0.05 -> 0.1", "label_smoothing: 0.0 -> 0.1")
    assert file_digest(out / "last.pt") == before

    lrs = []
    before_steps_from_epoch(monkeypatch, 1, lambda loop: lrs.append(loop.learners[0].optimizer.param_groups[0]["lr"]))
    # Harmless changes: the output, and more epochs (recorded with the epoch they took effect).
    result = cli("teach", "--out", out, "--resume", "--epochs", "4", "--no-quiet")
    assert result.code == 0, result.err
    assert "epoch 3/4" in result.out and "epoch 4/4" in result.out
    # The first resumed step already follows the cosine over 4 epochs (the 2-epoch one had reached 0).
    warmup = STEPS  # --warmup-epochs 1
    assert lrs == pytest.approx([0.05 * lr_factor(s, 4 * STEPS, warmup) for s in range(2 * STEPS, 4 * STEPS)],
                                rel=1e-12)
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == 4 and ck["scheduler"]["last_epoch"] == 4 * STEPS
    assert scalars(out)["accuracy/val"] == [1, 2, 3, 4]
    change = [{"setting": "epochs", "from": 2, "to": 4, "epoch": 2, "step": 0}]
    assert ck["changes"] == change
    for name in ("config.json", "metrics.json"):
        assert json.loads((out / name).read_text())["changes"] == change


@pytest.fixture
def two_teachers(cli, tiny_data, tmp_path):
    """Two different teacher checkpoints of the tiny data."""
    paths = []
    for seed in (0, 1):
        out = tmp_path / f"teacher{seed}"
        assert cli(*run_args("teach", tiny_data, out, 1, "--seed", str(seed))).code == 0
        paths.append(out / "best.pt")
    return paths


def test_a_resume_refuses_another_teacher_by_content_and_other_method_options(cli, tiny_data, tmp_path,
                                                                              monkeypatch, two_teachers):
    first, other = two_teachers
    taught = tmp_path / "t.pt"
    shutil.copy(first, taught)
    out = tmp_path / "student"
    args = run_args("student", tiny_data, out, 3, "--teacher", taught, "--any-teacher")
    with monkeypatch.context() as m:
        signal_after_steps(m, STEPS, signal.SIGINT)  # after epoch 1
        assert cli(*args).code == 130
    before = file_digest(out / "last.pt")
    shutil.copy(other, taught)  # the same path, another teacher
    assert_one_line_error(cli("student", "--out", out, "--resume", "--teacher", taught, "--any-teacher"),
                          f"teacher: {taught} is not the checkpoint that taught this run")
    shutil.copy(first, taught)
    assert_one_line_error(cli("student", "--out", out, "--resume", "--teacher", taught, "--any-teacher",
                              "--temperature", "1", "--lr", "0.5"),
                          "'temperature': 4.0", "'temperature': 1.0", "lr: 0.05 -> 0.5")
    assert file_digest(out / "last.pt") == before
    moved = tmp_path / "moved.pt"  # the same teacher elsewhere: fine, and recorded
    shutil.move(taught, moved)
    assert cli("student", "--out", out, "--resume", "--teacher", moved, "--any-teacher").code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["changes"] == [{"setting": "teacher", "from": str(taught), "to": str(moved), "epoch": 1, "step": 0}]
    assert metrics["teacher"]["path"] == str(moved) and len(metrics["teacher"]["sha256"]) == 64


def test_a_pipeline_whose_file_changed_does_not_resume_its_stage_with_the_new_recipe(cli, tiny_data, tmp_path,
                                                                                    monkeypatch):
    text = ('[common]\nimage_size = 16\nval_size = 6\nbatch_size = 8\nlr = 0.05\ndevice = "cpu"\nepochs = 2\n'
            '[teacher]\narch = "resnet8"\n[[students]]\narch = "resnet8"\n')
    config = tmp_path / "p.toml"
    config.write_text(text)
    args = ("pipeline", "--config", config, "--data", tiny_data, "--out", tmp_path / "runs", "--quiet")
    with monkeypatch.context() as m:
        signal_after_steps(m, 2 * STEPS + 2, signal.SIGINT)  # the teacher's 2 epochs, then 2 group steps
        assert cli(*args).code == 130
    config.write_text(text.replace("[[students]]\n", "[[students]]\ntemperature = 1.0\n"))
    assert_one_line_error(cli(*args), "cannot resume", "student-resnet8-kd", "'temperature': 1.0")



def test_a_resume_never_continues_one_kind_of_run_as_another(cli, tiny_data, tmp_path):
    """A student's (or a baseline's) folder resumed with `teach` would go on as plain cross-entropy and be
    recorded as a teacher; a teacher's resumed with `student` as a distilled run: each is refused, naming the
    command that does continue it, before any other difference, and the folder is left as it was."""
    teacher, student, baseline = (tmp_path / name for name in ("teacher", "student", "baseline"))
    assert cli(*run_args("teach", tiny_data, teacher, 1)).code == 0
    assert cli(*run_args("student", tiny_data, student, 1, "--teacher", teacher / "best.pt")).code == 0
    assert cli(*run_args("student", tiny_data, baseline, 1, "--no-teacher")).code == 0
    files = ("last.pt", "best.pt", "config.json", "metrics.json")
    before = {out / name: (out / name).read_bytes() for out in (teacher, student, baseline) for name in files}

    assert_one_line_error(cli("teach", "--out", student, "--resume", "--epochs", "2"),
                          f"{student} holds a student run (kd)", f"resume it with distill student --out {student} "
                          "--resume")
    assert_one_line_error(cli("teach", "--out", baseline, "--resume", "--epochs", "2"),
                          f"{baseline} holds a baseline run", f"distill student --out {baseline} --resume")
    result = cli("student", "--out", teacher, "--resume", "--teacher", teacher / "best.pt", "--epochs", "2")
    assert_one_line_error(result, f"{teacher} holds a teacher run", f"distill teach --out {teacher} --resume")
    assert "is not the checkpoint that taught" not in result.err
    assert_one_line_error(cli("student", "--out", teacher, "--resume"),  # not "--method kd needs --teacher"
                          f"{teacher} holds a teacher run: resume it with distill teach --out {teacher} --resume")
    # A baseline made a student by the options: the checkpoint's own role is checked before training.
    assert_one_line_error(cli("student", "--out", baseline, "--resume", "--with-teacher", "--teacher",
                              teacher / "best.pt"), f"{baseline} holds a baseline run: resume it with distill student")
    assert {path: path.read_bytes() for path in before} == before
    # And so it is for a run resumed from Python (a pipeline's stage), whatever its config.json says.
    as_teacher = C.resolve(C.TeachConfig, {"data": str(tiny_data), "out": str(student), "resume": True})
    with pytest.raises(UserError, match=f"^{student} holds a student run \\(kd\\): resume it with distill student"):
        check_resume(load_checkpoint(student / "last.pt"), as_teacher, None, student)
