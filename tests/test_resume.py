"""`--resume` continues a run exactly: bit-identical weights after interruptions, one TensorBoard curve,
a longer schedule when --epochs grows, and a one-line refusal when a setting that matters changed."""

from __future__ import annotations

import shutil
import signal

import pytest

from conftest import file_digest
from distill.checkpoint import load_checkpoint
from distill.build import lr_factor
from runhelpers import assert_same, before_steps_from_epoch, run_args, signal_after_steps
from test_bad_input import assert_one_line_error
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
    assert steps["accuracy/test"] == [3]


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

    lrs = []
    before_steps_from_epoch(monkeypatch, 1, lambda loop: lrs.append(loop.learners[0].optimizer.param_groups[0]["lr"]))
    # Harmless changes: more epochs, output, and a new peak --lr (load_state_dict alone would keep the old one).
    result = cli("teach", "--out", out, "--resume", "--epochs", "4", "--no-quiet", "--lr", "0.1")
    assert result.code == 0, result.err
    assert "epoch 3/4" in result.out and "epoch 4/4" in result.out
    # The first resumed step already follows the cosine over 4 epochs (the 2-epoch one had reached 0).
    warmup = STEPS  # --warmup-epochs 1
    assert lrs == pytest.approx([0.1 * lr_factor(s, 4 * STEPS, warmup) for s in range(2 * STEPS, 4 * STEPS)],
                                rel=1e-12)
    ck = load_checkpoint(out / "last.pt")
    assert ck["epoch"] == 4 and ck["scheduler"]["last_epoch"] == 4 * STEPS
    assert scalars(out)["accuracy/val"] == [1, 2, 3, 4]

