"""`distill compare` on hand-written metrics.json files (no training, a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from distill.compare import compare
from test_bad_input import assert_one_line_error


def fake_run(folder: Path, role: str, arch: str, accuracy: float, method: str | None = None,
             params: int = 270_000) -> None:
    folder.mkdir(parents=True)
    metrics = {"role": role, "arch": arch, "method": method, "params": params, "gflops": 0.08,
               "test_accuracy": accuracy, "best_val_accuracy": float("nan"), "epochs": 3, "wall_seconds": 75.0,
               "train_images_per_second": 1234.5}
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path) -> Path:
    exp = tmp_path / "exp"
    fake_run(exp / "student-resnet20-kd", "student", "resnet20", 0.9215, "kd")
    fake_run(exp / "student-resnet20-dkd", "student", "resnet20", 0.9100, "dkd")
    fake_run(exp / "baseline-resnet20", "baseline", "resnet20", 0.9150, "none")
    fake_run(exp / "student-resnet8x4-kd", "student", "resnet8x4", 0.9300, "kd", params=1_230_000)
    fake_run(exp / "teacher-resnet50", "teacher", "resnet50", 0.9512, params=23_500_000)
    fake_run(tmp_path / "other" / "baseline-resnet8x4", "baseline", "resnet8x4", 0.5)  # another experiment
    return tmp_path


def by_name(result: dict) -> dict:
    return {r["name"]: r for r in result["runs"]}


def test_gain_is_over_the_baseline_of_the_same_arch_in_the_same_experiment(runs):
    rows = by_name(compare(runs))
    assert rows["exp/student-resnet20-kd"]["gain_over_baseline"] == pytest.approx(0.65)
    assert rows["exp/student-resnet20-dkd"]["gain_over_baseline"] == pytest.approx(-0.5)
    assert rows["exp/student-resnet8x4-kd"]["gain_over_baseline"] is None  # its arch's baseline is elsewhere
    assert rows["exp/teacher-resnet50"]["gain_over_baseline"] is None
    assert rows["exp/baseline-resnet20"]["best_val_accuracy"] is None  # NaN is not JSON


def test_rows_teacher_first_then_by_arch_baseline_before_students(runs):
    names = [r["name"] for r in compare(runs)["runs"]]
    assert names == ["exp/teacher-resnet50", "exp/baseline-resnet20", "exp/student-resnet20-dkd",
                     "exp/student-resnet20-kd", "exp/student-resnet8x4-kd", "other/baseline-resnet8x4"]


def test_json_output_chart_and_tensorboard_image(runs, cli):
    result = json.loads(cli("compare", runs / "exp", "--json").out)
    assert len(result["runs"]) == 5 and result["chart"] == str(runs / "exp" / "compare.png")
    expected = {"name", "path", "role", "arch", "method", "params", "gflops", "test_accuracy", "best_val_accuracy",
                "epochs", "wall_seconds", "train_images_per_second", "gain_over_baseline"}
    assert all(set(r) == expected for r in result["runs"])
    with Image.open(result["chart"]) as chart:
        assert chart.size == (960, 600) and chart.mode == "RGB"
    assert cli("compare", runs / "exp", "--json").code == 0  # a second comparison replaces the first image
    assert len(list((runs / "exp" / "compare").glob("events.out.tfevents.*"))) == 1


def test_table_names_every_run(runs, cli):
    out = cli("compare", runs).out
    assert all(name in out for name in ("teacher-resnet50", "student-resnet20-kd", "+0.65", "-0.50", "1m15.0s"))


def broken_run(root: Path, text: str) -> None:
    fake_run(root / "run", "student", "resnet20", 0.5)
    (root / "run" / "metrics.json").write_text(text)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "no runs (folders with metrics.json) under"),
    (lambda p: None, "is not a folder"),
    (lambda p: broken_run(p, "{"), "cannot read"),
    (lambda p: broken_run(p, "[]"), "a JSON list, not an object"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, cli, make, message):
    make(tmp_path / "runs")
    assert_one_line_error(cli("compare", tmp_path / "runs"), message)
