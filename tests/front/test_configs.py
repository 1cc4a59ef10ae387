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


# RepDistiller's CIFAR-100 pairs, teacher -> student (their README's tables; our arch names where they are the same
# network), each shipped as configs/pipeline/cifar100_<teacher>_<student>.toml with their schedule and _short.toml
# with a GPU-sized one.
REFERENCE_PAIRS = {"resnet32x4": "resnet8x4", "wrn_40_2": "wrn_16_2", "resnet56": "resnet20", "vgg13": "vgg8",
                   "resnet50": "mobilenetv2"}
# Their thin ResNets have 1x1-projection shortcuts: our "b" nets build them (parameter counts checked against their
# code in tests/models/test_students.py), our resnet56 and resnet20 are He et al.'s.
THEIR_NETWORK = {"resnet56": "resnet56b", "resnet20": "resnet20b"}
# Their train_student.py and train_teacher.py: lr 0.05, but 0.01 for these students.
SLOW_STUDENTS = ("mobilenetv2",)
# What the short schedule may change; everything else is the reference file's.
SCHEDULE_KEYS = ("epochs", "batch_size", "lr", "schedule", "milestones", "lr_decay", "warmup_epochs")


def reference_configs(name: str, tmp_path) -> list[C.TrainConfig]:
    pipe = load_pipeline(CONFIGS / "pipeline" / name, {"data": "d"}, str(tmp_path / "out"))
    return [stage.config(pipe.out) for stage in pipe.stages]


def runs(cfgs: list[C.TrainConfig]) -> list[tuple[str, str]]:
    return [(cfg.arch, getattr(cfg, "effective_method", "teacher")) for cfg in cfgs]


def pair_runs(teacher: str, student: str) -> list[tuple[str, str]]:
    """A reference pipeline's runs: the teacher, the KD and CRD students and the baseline, each their network."""
    teacher, student = (THEIR_NETWORK.get(name, name) for name in (teacher, student))
    return [(teacher, "teacher"), (student, "kd"), (student, "crd"), (student, "none")]


def student_lr(student: str, per_64: float, batch_size: int) -> float:
    """Their rate for a batch of 64, scaled linearly to the batch."""
    return (0.01 if student in SLOW_STUDENTS else per_64) * batch_size / 64


@pytest.mark.parametrize("teacher, student", REFERENCE_PAIRS.items())
def test_each_reference_pair_has_repdistillers_schedule_and_its_kd_and_crd_students(teacher, student, tmp_path):
    from distill.experiments.pipeline import plan_groups
    from distill.methods import resolve_options

    name = f"cifar100_{teacher}_{student}.toml"
    cfgs = reference_configs(name, tmp_path)
    assert runs(cfgs) == pair_runs(teacher, student)
    for cfg in cfgs:  # train_student.py's and train_teacher.py's defaults, on CIFAR-100
        assert (cfg.dataset, cfg.epochs, cfg.batch_size, cfg.momentum, cfg.weight_decay) == ("cifar100", 240, 64, 0.9, 5e-4)
        assert (cfg.schedule, cfg.milestones, cfg.lr_decay, cfg.warmup_epochs) == ("step", "150,180,210", 0.1, 0)
        assert (cfg.augment, cfg.val_size, cfg.ema_horizon, cfg.tta, cfg.label_smoothing) == ("default", 0, 0, False, 0)
    assert [cfg.lr for cfg in cfgs] == [0.05] + [student_lr(student, 0.05, 64)] * 3  # the baseline's too
    teacher_cfg, kd, crd, _ = cfgs
    if teacher == "resnet50":  # their ResNet50: the CIFAR stem, from scratch
        assert (teacher_cfg.stem, teacher_cfg.weights) == ("cifar", "none")
    # scripts/run_cifar_distill.sh: KD with -r 0.1 -a 0.9 (T 4), CRD with -a 0 -b 0.8 (feat_dim 128, nce_k 16384,
    # nce_t 0.07, nce_m 0.5)
    assert vars(resolve_options("kd", kd.method_options())) == {"temperature": 4.0, "kd_weight": 0.9}
    assert vars(resolve_options("crd", crd.method_options())) == {
        "crd_weight": 0.8, "crd_dim": 128, "crd_negatives": 16384, "nce_temperature": 0.07, "bank_momentum": 0.5}
    pipe = load_pipeline(CONFIGS / "pipeline" / name, {"data": "d"}, str(tmp_path / "out"))
    assert [len(group) for group in plan_groups(pipe)] == [1, 3]  # the students and the baseline train together


@pytest.mark.parametrize("teacher, student", REFERENCE_PAIRS.items())
def test_each_short_schedule_is_its_reference_pair_with_only_the_schedule_changed(teacher, student, tmp_path):
    stem = f"cifar100_{teacher}_{student}"
    long, short = (C.read_toml(CONFIGS / "pipeline" / f"{name}.toml") for name in (stem, f"{stem}_short"))
    assert {k: v for k, v in short.items() if k not in ("common", "students")} == \
           {k: v for k, v in long.items() if k not in ("common", "students")}  # the same teacher table and flags

    def without_schedule(table: dict) -> dict:
        return {k: v for k, v in table.items() if k not in SCHEDULE_KEYS}

    assert without_schedule(short["common"]) == without_schedule(long["common"])
    assert [without_schedule(s) for s in short["students"]] == [without_schedule(s) for s in long["students"]]
    cfgs = reference_configs(f"{stem}_short.toml", tmp_path)
    assert runs(cfgs) == pair_runs(teacher, student)
    for cfg in cfgs:  # 30 epochs of cosine after a 1-epoch warm-up, at batch 512
        assert (cfg.epochs, cfg.batch_size, cfg.schedule, cfg.milestones, cfg.warmup_epochs) == (30, 512, "cosine", None, 1)
    assert [cfg.lr for cfg in cfgs] == [0.4] + [student_lr(student, 0.05, 512)] * 3  # linear scaling of theirs
