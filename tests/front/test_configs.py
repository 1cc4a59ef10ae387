"""Every config file shipped in configs/ loads and validates: a typo there would greet a user as an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.front import config as C
from distill.experiments.pipeline import load_pipeline

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def shipped(folder: str) -> list[Path]:
    paths = sorted((CONFIGS / folder).glob("*.toml"))
    assert paths, f"no configs in {folder}"
    return paths


@pytest.mark.parametrize("path", shipped("pipeline"), ids=lambda p: p.name)
def test_pipeline_configs_plan_a_teacher_then_students_and_baselines(path, tmp_path):
    pipe = load_pipeline(path, {"data": "d"})
    roles = [stage.config(tmp_path).role for stage in pipe.stages]  # each stage's config resolves and validates
    assert roles[0] == "teacher" and "student" in roles
    assert ("baseline" in roles) == C.read_toml(path).get("baselines", True)
    assert pipe.out == Path("runs") / path.stem


@pytest.mark.parametrize("path", shipped("teacher"), ids=lambda p: p.name)
def test_teacher_configs_validate(path):
    cfg = C.resolve(C.TeachConfig, {"config": str(path)})
    assert cfg.arch == "resnet50" and cfg.epochs >= 1


@pytest.mark.parametrize("path", shipped("student"), ids=lambda p: p.name)
def test_student_configs_validate(path):
    baseline = path.stem.endswith("_baseline")
    cfg = C.resolve(C.StudentConfig, {"config": str(path), "teacher": None if baseline else "teacher.pt"})
    assert cfg.effective_method == ("none" if baseline else path.stem.split("_")[-1])


def test_the_headline_pipeline_trains_its_teacher_then_all_four_students_together(tmp_path):
    from distill.experiments.pipeline import plan_groups

    pipe = load_pipeline(CONFIGS / "pipeline" / "cifar10.toml", {"data": "d"}, str(tmp_path / "out"))
    cfgs = [stage.config(pipe.out) for stage in pipe.stages]
    teacher, students = cfgs[0], cfgs[1:]
    assert (teacher.arch, teacher.stem, teacher.weights, teacher.augment) == ("resnet50", "cifar", "none", "strong")
    assert sorted((c.arch, c.effective_method) for c in students) == [
        ("resnet20", "kd"), ("resnet20", "none"), ("resnet8x4", "kd"), ("resnet8x4", "none")]
    assert all(c.val_size == 0 and c.label_smoothing == 0 for c in cfgs)  # all 50,000 images; plain CE
    assert [[s.name for s in group] for group in plan_groups(pipe)] == [
        ["teacher-resnet50"], ["student-resnet20-kd", "student-resnet8x4-kd", "baseline-resnet20", "baseline-resnet8x4"]]


def test_the_function_matching_config_is_the_headlines_resnet20_kd_student_with_its_own_mix(tmp_path):
    """Run into the headline's folder it reuses the finished teacher and trains beside the headline's runs, so
    its [common] and [teacher] are the headline's, and its student differs from the headline's only by --mix."""
    headline, fm = (C.read_toml(CONFIGS / "pipeline" / name) for name in ("cifar10.toml", "cifar10_fm.toml"))
    assert fm["common"] == headline["common"] and fm["teacher"] == headline["teacher"]
    [student] = fm["students"]
    original = next(s for s in headline["students"] if s["arch"] == student["arch"])
    assert {k: v for k, v in student.items() if k != "mix"} == original and "mix" not in original
    pipe = load_pipeline(CONFIGS / "pipeline" / "cifar10_fm.toml", {"data": "d"}, str(tmp_path / "cifar10"))
    assert [s.name for s in pipe.stages] == ["teacher-resnet50", "student-resnet20-kd-mix"]
    assert pipe.stages[0].config(pipe.out) == load_pipeline(CONFIGS / "pipeline" / "cifar10.toml", {"data": "d"},
                                                            str(tmp_path / "cifar10")).stages[0].config(pipe.out)
