"""The plan of `distill pipeline`: its TOML file read and checked into stages, without torch.

Kept apart from distill/experiments/pipeline.py (which trains the stages, and imports torch) so that the command line
answers a missing file, bad TOML, an unknown key or a bad value in a fraction of a second, before torch is
imported; distill.experiments.pipeline re-exports Pipeline, Stage and load_pipeline. The file format: see
distill/experiments/pipeline.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from distill.front import config as C
from distill.errors import UserError
from distill.methods import all_option_names
from distill.engine.folder import default_out

TOP_KEYS = ("baselines", "common", "seeds", "students", "teacher", "train_together")
MANAGED = {"config", "out", "resume", "force"}  # set per stage by the pipeline, never by the file
STUDENT_MANAGED = MANAGED | {"teacher", "no_teacher"}  # the teacher is the teacher stage's best.pt
# What a baseline drops from its student's table: the distillation, and the mixing a student adds to see the
# teacher on mixed images (a baseline keeps the group's shared, unmixed batch).
DISTILLATION_KEYS = ("method", "any_teacher", "mix", *all_option_names())
SHARED = {f.name for f in dataclasses.fields(C.TrainConfig)}  # valid for a teacher and a student alike
ROLE_TABLES = ((C.TeachConfig, "[teacher]"), (C.StudentConfig, "[[students]]"))


@dataclass
class Stage:
    name: str  # its run folder: teacher-<arch>, student-<arch>-<method> or baseline-<arch>
    cls: type
    values: dict  # config-file values; resolved against cls defaults when the stage runs

    def config(self, out: Path, **flags: bool) -> C.TrainConfig:
        return C.resolve(self.cls, {}, {**self.values, "out": str(out / self.name), **flags})


@dataclass
class Pipeline:
    source: Path
    out: Path
    stages: list[Stage]
    train_together: bool = True


def check_table(table: object, source: str, managed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise UserError(f"{source} must be a table of options, got {type(table).__name__}: "
                        f"see the README section on distill pipeline")
    for key in table:
        if key.replace("-", "_") in managed:
            raise UserError(f"{source}: '{key}' is set by the pipeline for each stage: remove it")
    return table


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def common_values(table: object, source: str) -> dict:
    """[common] applies to every stage, so each key must be an option of teach and student alike."""
    table = check_table(table, source, MANAGED)
    for key in table:
        name = key.replace("-", "_")
        homes = [where for cls, where in ROLE_TABLES if name in field_names(cls)]
        if name not in SHARED and homes:
            raise UserError(f"{source}: '{key}' is not an option of every stage: move it to {' or '.join(homes)}")
    return C.values_from_mapping(C.TrainConfig, table, source)


def make_stage(cls: type, values: dict, source: str, suffix: str = "") -> Stage:
    """Resolve once now, so a bad value in the last student fails before the teacher trains for an hour."""
    try:
        cfg = C.resolve(cls, {}, values)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return Stage(default_out(cfg).name + suffix, cls, values)


def seed_list(raw: dict, students: list[dict], source: str) -> list[int | None]:
    """`seeds = [0, 1, 2]`: every student and baseline once per seed (the teacher once); absent: [None],
    the seed of the file's tables."""
    if "seeds" not in raw:
        return [None]
    seeds = raw["seeds"]
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 for x in seeds)):
        raise UserError(f"{source}: 'seeds' must be a list of distinct integers in [0, 2^31), e.g. seeds = [0, 1, 2]; "
                        f"got {seeds!r}")
    if any("seed" in s for s in students):
        raise UserError(f"{source}: a [[students]] table sets 'seed' while 'seeds' lists them all: remove one")
    return seeds


def student_stages(raw: dict, common: dict, teacher: Stage, out_dir: Path, overrides: dict, source: str) -> list[Stage]:
    """Students, then one baseline per student arch, for each seed in turn (a seed's runs train together)."""
    students = student_tables(raw, source)
    taught = {"teacher": str(out_dir / teacher.name / "best.pt")}
    stages = []
    for seed in seed_list(raw, students, source):
        seeded, suffix = ({"seed": seed}, f"-seed{seed}") if seed is not None else ({}, "")
        stages += [make_stage(C.StudentConfig, common | s | taught | seeded | overrides,
                              f"{source} [[students]] #{i}", suffix) for i, s in enumerate(students, start=1)]
        if raw.get("baselines", True):
            stages += [make_stage(C.StudentConfig, common | b | seeded | overrides, f"{source} baseline of {b['arch']}",
                                  suffix) for b in baseline_tables(students)]
    return stages


def student_tables(raw: dict, source: str) -> list[dict]:
    tables = raw.get("students", [])
    if not isinstance(tables, list):
        raise UserError(f"{source}: 'students' must be an array of tables: write [[students]] (double brackets) "
                        f"above each student's options")
    if not tables:
        raise UserError(f"{source}: no [[students]] entries: add at least one, e.g. [[students]] arch = \"resnet20\"")
    values = []
    for i, table in enumerate(tables, start=1):
        where = f"{source} [[students]] #{i}"
        values.append(C.values_from_mapping(C.StudentConfig, check_table(table, where, STUDENT_MANAGED), where))
        if "arch" not in values[-1]:
            raise UserError(f"{where}: no 'arch': name the student, e.g. arch = \"resnet20\"")
    return values


def baseline_tables(students: list[dict]) -> list[dict]:
    """One baseline per student arch: the first such student's recipe without the distillation."""
    first: dict[str, dict] = {}
    for values in students:
        first.setdefault(values["arch"], values)
    return [{k: v for k, v in s.items() if k not in DISTILLATION_KEYS} | {"no_teacher": True} for s in first.values()]


def check_top(raw: dict, source: str, keys: tuple[str, ...] = TOP_KEYS, teacher_needed: bool = True) -> None:
    """The top level of a pipeline's file (`keys`: a transfer experiment's, whose [teacher] is optional)."""
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise UserError(f"{source}: unknown top-level key '{unknown[0]}'; valid keys: {', '.join(keys)}")
    if teacher_needed and "teacher" not in raw:
        raise UserError(f"{source}: no [teacher] table: add one with the teacher's options, e.g. arch = \"resnet50\"")
    for key in ("baselines", "train_together"):
        if not isinstance(raw.get(key, True), bool):
            raise UserError(f"{source}: '{key}' must be true or false, got {raw[key]!r}")


def teacher_table(raw: dict, source: str) -> dict:
    where = f"{source} [teacher]"
    return C.values_from_mapping(C.TeachConfig, check_table(raw["teacher"], where, MANAGED), where)


def check_unique(stages: list[Stage], out: Path, source: str) -> None:
    names = [s.name for s in stages]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"{source}: two stages would both write {out / name}: give each student "
                            f"its own arch or method (baselines are added for you)")


def load_pipeline(path: Path, overrides: dict, out: str | None = None, sets: dict | None = None) -> Pipeline:
    """Read and validate the whole plan. `overrides` (data, device, quiet from the command line) and `sets`
    (--set KEY=VALUE: any option every stage takes) beat the file."""
    source = str(path)
    raw = C.read_toml(path)
    check_top(raw, source)
    common = common_values(raw.get("common", {}), f"{source} [common]")
    overrides = common_values(sets or {}, "--set") | overrides
    out_dir = Path(out) if out else Path("runs") / path.stem
    teacher = make_stage(C.TeachConfig, common | teacher_table(raw, source) | overrides, f"{source} [teacher]")
    stages = [teacher] + student_stages(raw, common, teacher, out_dir, overrides, source)
    check_unique(stages, out_dir, source)
    return Pipeline(path, out_dir, stages, raw.get("train_together", True))


def stage_status(folder: Path) -> str:
    if (folder / "metrics.json").is_file():
        return "skipped"
    return "resumed" if (folder / "last.pt").is_file() else "ran"


def pending_configs(pipe: Pipeline) -> list[tuple[str, C.TrainConfig]]:
    """(name, config) of every stage still to train: finished ones are skipped."""
    return [(s.name, s.config(pipe.out)) for s in pipe.stages if stage_status(pipe.out / s.name) != "skipped"]


def check_data_paths(pipe: Pipeline) -> None:
    """Every stage still to train reads data that exists."""
    for name, cfg in pending_configs(pipe):
        if cfg.data is not None and not Path(cfg.data).expanduser().exists():
            raise UserError(f"stage {name}: --data {cfg.data} does not exist (relative paths start where distill "
                            f"runs): fix the path in the config or pass --data")
