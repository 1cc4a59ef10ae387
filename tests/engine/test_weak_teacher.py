"""The end of a real `distill student` run says so when its teacher tests below the student it taught: a teacher
must beat the student's baseline to teach (the smoke run's 29.6% teacher cost its KD student 4.3 points)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from runhelpers import run_args


def always_the_first_class(best: Path, weak: Path) -> None:
    """A copy of a teacher's checkpoint whose head ignores the image and answers the first class: on conftest's tiny
    data (three classes, four test images each) it tests at exactly 33.33%, whatever its training reached."""
    ck = torch.load(best, map_location="cpu", weights_only=True)
    for weights in (ck["model"], ck.get("ema")):
        if weights is None:
            continue
        heads = [k for k, v in weights.items() if k.endswith("weight") and v.ndim == 2]
        assert len(heads) == 1, heads  # the linear head, the only 2-d weight of a CIFAR ResNet
        name = heads[0].removesuffix("weight")
        weights[heads[0]].zero_()
        weights[name + "bias"].copy_(torch.tensor([1.0, 0.0, 0.0]))
    torch.save(ck, weak)


def test_a_student_run_ends_naming_a_teacher_weaker_than_the_student(cli, tiny_data, tmp_path):
    assert cli(*run_args("teach", tiny_data, tmp_path / "teacher", 1)).code == 0
    weak = tmp_path / "weak.pt"
    always_the_first_class(tmp_path / "teacher" / "best.pt", weak)
    out = tmp_path / "student-resnet8-kd"
    # Mostly cross-entropy (--kd-weight 0.1), so the student learns the colours the constant teacher cannot tell.
    result = cli(*run_args("student", tiny_data, out, 4, "--teacher", weak, "--kd-weight", "0.1"))
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["teacher"]["test_accuracy"] == pytest.approx(4 / 12) and metrics["test_accuracy"] > 0.34, metrics
    lines = result.out.splitlines()
    said = (f"{out.name}: the teacher {weak} tests at 33.33%, below this student itself at "
            f"{100 * metrics['test_accuracy']:.2f}%: a teacher must beat the student's baseline to teach, so the "
            f"comparison judges the teacher, not the method; train a stronger teacher first")
    assert said in lines, result.out
    assert lines.index(said) > next(i for i, line in enumerate(lines) if "test accuracy" in line)  # after the result
