"""torch.compile of the student and the teacher (--compile, --compile-teacher, --compile-mode), on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from distill.bench import timing as bench
from distill.bench.options import bench_options
from distill.engine.loop import train_step
from distill.models import unwrap

OptimizedModule = torch._dynamo.eval_frame.OptimizedModule


def tiny_loop(compile: bool, mode: str = "default"):
    """The distillation Loop `distill bench --mode distill` builds: resnet8 taught by a random resnet8."""
    opts = bench_options(["resnet8"], ["distill"], 4, "cpu", "fp32", False, compile, "resnet8",
                                 0, 1, compile_mode=mode)
    return bench.bench_loop(opts, "resnet8", distill=True)


def one_step(loop) -> tuple[float, torch.Tensor]:
    torch.manual_seed(3)  # the same augmentation draws for both loops
    [(loss, _)] = train_step(loop, torch.arange(4), index=0)
    return loss.item(), next(unwrap(loop.learners[0].model).parameters()).detach().clone()


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_teacher_and_student_take_the_same_step(mode):
    plain, compiled = tiny_loop(False), tiny_loop(True, mode)
    assert isinstance(compiled.teacher.model, OptimizedModule) and isinstance(compiled.learners[0].model, OptimizedModule)
    assert not isinstance(unwrap(compiled.teacher.model), OptimizedModule)
    (loss_a, weights_a), (loss_b, weights_b) = one_step(plain), one_step(compiled)
    assert loss_b == pytest.approx(loss_a, rel=1e-4)  # the KD loss needs the teacher's logits: they match
    torch.testing.assert_close(weights_b, weights_a, rtol=1e-4, atol=1e-5)


def test_bench_reports_the_compiled_teacher_forward(cli):
    result = cli("bench", "--device", "cpu", "--arch", "resnet8", "--batch-size", "4", "--warmup", "1", "--steps", "1",
                 "--mode", "distill", "--teacher-arch", "resnet8", "--compile", "--compile-mode", "reduce-overhead",
                 "--json")
    assert result.code == 0, result.err
    rows = {r["mode"]: r for r in json.loads(result.out)["results"]}
    for mode in ("distill", "teacher_forward"):
        assert rows[mode]["compile"] is True and rows[mode]["compile_mode"] == "reduce-overhead"
        assert rows[mode]["warmup_seconds"] > 0 and rows[mode]["images_per_second"] > 0


def test_student_with_compiled_teacher_trains_and_reports_its_accuracy(cli, tiny_data, tmp_path):
    common = ("--data", tiny_data, "--image-size", "16", "--val-size", "6", "--epochs", "1", "--batch-size", "8",
              "--device", "cpu", "--quiet")
    teacher = tmp_path / "teacher"
    assert cli("student", "--no-teacher", "--arch", "resnet8", "--out", teacher, *common).code == 0
    out = tmp_path / "student"
    result = cli("student", "--teacher", teacher / "best.pt", "--any-teacher", "--arch", "resnet8", "--out", out,
                 "--compile-teacher", "--compile-mode", "reduce-overhead", *common)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["compile_teacher"] is True and config["compile_mode"] == "reduce-overhead"
    expected = json.loads((teacher / "metrics.json").read_text())["test_accuracy"]
    assert metrics["teacher"]["test_accuracy"] == pytest.approx(expected)  # evaluated through the plain module
    keys = torch.load(out / "best.pt", weights_only=True)["model"].keys()
    assert not any(k.startswith("_orig_mod.") for k in keys)
