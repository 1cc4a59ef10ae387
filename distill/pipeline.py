"""`distill pipeline`: a whole experiment from one TOML file: teacher, students, baselines, comparison.

    baselines = true        # optional (default true): one --no-teacher run per distinct student arch
    train_together = true   # optional (default true): students and baselines that share their batches
                            # train in one loop, with one teacher forward per batch for all of them
    seeds = [0, 1, 2]       # optional: each student and baseline once per seed (folders ...-seed<N>),
                            # the teacher once; `distill compare` then reports mean and std over seeds
    [common]                # optional: options for every stage (keys shared by teach and student)
    [teacher]               # `distill teach` options
    [[students]]            # `distill student` options, one table per student: arch, method (default kd)

Every stage is an ordinary run folder inside the pipeline's out folder, so rerunning the same command
continues an interrupted pipeline: finished stages (metrics.json) are skipped, a stage with last.pt
is resumed, anything else starts over. Stages trained together stay one run folder each.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from distill import config as C
from distill.checkpoint import write_text_atomic
from distill.compare import compare, minutes, print_comparison
from distill.errors import UserError
from distill.checkpoint import load_checkpoint
from distill.methods import all_option_names
from distill.build import GROUP_SHARED
from distill.runfolder import default_out
from distill.run import train_group

TOP_KEYS = ("baselines", "common", "seeds", "students", "teacher", "train_together")
MANAGED = {"config", "out", "resume", "force"}  # set per stage by the pipeline, never by the file
STUDENT_MANAGED = MANAGED | {"teacher", "no_teacher"}  # the teacher is the teacher stage's best.pt
# What a baseline drops from its student's table: the distillation, and the mixing a student adds to see the
# teacher on mixed images (a baseline keeps the group's shared, unmixed batch).
KD_ONLY = ("method", "any_teacher", "mix", *all_option_names())
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
    return [{k: v for k, v in s.items() if k not in KD_ONLY} | {"no_teacher": True} for s in first.values()]


def check_top(raw: dict, source: str) -> None:
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise UserError(f"{source}: unknown top-level key '{unknown[0]}'; valid keys: {', '.join(TOP_KEYS)}")
    if "teacher" not in raw:
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


def changed_settings(stage: Stage, out: Path) -> list[str]:
    """Options of a finished stage that differ from the file now: it is skipped all the same, so say so."""
    path = out / stage.name / "config.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    planned = C.to_dict(stage.config(out))
    return [k for k, v in planned.items() if k not in C.NOT_COMPUTED and k in saved and saved[k] != v]


def skip(stage: Stage, out: Path, console: Console) -> dict:
    changed = changed_settings(stage, out)
    note = f"; it was run with other {', '.join(changed)}: delete {out / stage.name} to rerun it" if changed else ""
    console.print(f"skip {stage.name} (finished{note})")
    try:  # the finished run's result stays in the report
        accuracy = json.loads((out / stage.name / "metrics.json").read_text()).get("test_accuracy")
    except (OSError, ValueError, AttributeError):
        accuracy = None
    return {"name": stage.name, "status": "skipped", "wall_seconds": 0.0, "test_accuracy": accuracy}


def stage_config(stage: Stage, out: Path) -> C.TrainConfig:
    """Resume a stage with last.pt; start any other over (config.json without last.pt: stopped before its
    first checkpoint, nothing worth keeping)."""
    folder = out / stage.name
    if stage_status(folder) == "resumed":
        return stage.config(out, resume=True)
    return stage.config(out, force=(folder / "config.json").is_file())


def train_stages(stages: list[Stage], out: Path, console: Console) -> list[dict]:
    """Train stages (one, or several together) and return a record per stage."""
    statuses = [stage_status(out / s.name) for s in stages]
    names = ", ".join(s.name for s in stages)
    verb = "resume" if statuses[0] == "resumed" else "start"
    console.print(f"{verb} {names}" + (" together (one augmented batch and one teacher forward per step)"
                                        if len(stages) > 1 else ""))
    for stage in stages:
        folder = out / stage.name
        if (folder / "best.pt").is_file() and not (folder / "last.pt").is_file():
            console.print(f"{stage.name} starts over: its folder holds best.pt but no last.pt (a run stopped during "
                          f"its first save), which cannot be continued; that best.pt is replaced")
    started = time.perf_counter()
    try:
        metrics = train_group([stage_config(s, out) for s in stages])
    except UserError as err:
        if err.exit_code == 2:
            raise
        raise UserError(f"{err}; or rerun this distill pipeline command: finished stages are skipped",
                        err.exit_code) from None
    seconds = time.perf_counter() - started
    together = {"trained_together": [s.name for s in stages]} if len(stages) > 1 else {}
    return [{"name": s.name, "status": status, "wall_seconds": seconds, "test_accuracy": m.get("test_accuracy"),
             **together} for s, status, m in zip(stages, statuses, metrics)]


def run_stage(stage: Stage, out: Path, console: Console) -> dict:
    """One stage alone: skipped when finished, else trained."""
    if stage_status(out / stage.name) == "skipped":
        return skip(stage, out, console)
    return train_stages([stage], out, console)[0]


def position(stage: Stage, out: Path) -> tuple[int, int]:
    """(epoch, step) a stage continues from: a group's runs must all stand at the same step."""
    folder = out / stage.name
    if stage_status(folder) != "resumed":
        return (0, 0)
    ck = load_checkpoint(folder / "last.pt")
    return ck["epoch"], ck.get("step_in_epoch", 0)


def plan_groups(pipe: Pipeline) -> list[list[Stage]]:
    """The teacher alone, then students and baselines that share their batches (GROUP_SHARED) and stand at
    the same step together; finished stages alone (they are skipped)."""
    teacher, rest = pipe.stages[0], pipe.stages[1:]
    groups: dict[tuple, list[Stage]] = {}
    for i, stage in enumerate(rest):
        if not pipe.train_together or stage_status(pipe.out / stage.name) == "skipped":
            groups[("alone", i)] = [stage]
            continue
        cfg = C.to_dict(stage.config(pipe.out))
        key = tuple(repr(cfg[k]) for k in GROUP_SHARED) + position(stage, pipe.out)
        groups.setdefault(key, []).append(stage)
    return [[teacher], *groups.values()]


def write_report(pipe: Pipeline, records: list[dict], started: float, finished: bool) -> float:
    total = time.perf_counter() - started
    order = {stage.name: i for i, stage in enumerate(pipe.stages)}  # groups may finish out of file order
    report = {"config": str(pipe.source), "out": str(pipe.out), "finished": finished,
              "stages": sorted(records, key=lambda r: order[r["name"]]), "total_seconds": total}
    write_text_atomic(json.dumps(report, indent=2), pipe.out / "pipeline.json")
    return total


def make_out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose another --out for the pipeline")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".distill-write-test"
        probe.write_bytes(b"")  # a read-only folder lets mkdir pass; writing is the real test
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write in the pipeline folder {out} ({exc.strerror or exc}): make it writable "
                        f"or choose another --out") from None


def preflight(pipe: Pipeline) -> None:
    """What would stop a later stage, checked before the teacher trains: the folder, every stage's data path,
    and every stage's batch against the number of training images its data gives."""
    make_out_folder(pipe.out)
    cfgs = [(s.name, s.config(pipe.out)) for s in pipe.stages if stage_status(pipe.out / s.name) != "skipped"]
    for name, cfg in cfgs:
        if cfg.data is not None and not Path(cfg.data).expanduser().exists():
            raise UserError(f"stage {name}: --data {cfg.data} does not exist (relative paths start where distill "
                            f"runs): fix the path in the config or pass --data")
    sizes: dict[tuple, int] = {}
    for name, cfg in cfgs:
        key = (cfg.data, cfg.image_size, cfg.cache_dir, cfg.val_size, cfg.limit_train, cfg.seed)
        if key not in sizes:
            sizes[key] = training_images(cfg)
        if cfg.batch_size > sizes[key]:
            raise UserError(f"stage {name}: --batch-size {cfg.batch_size} is larger than its {sizes[key]} training "
                            f"images: lower batch_size in the config")


def training_images(cfg: C.TrainConfig) -> int:
    """How many training images a stage gets (decoding its data once; later stages read the cache)."""
    from distill.data import load_dataset, make_splits

    ds = load_dataset(cfg.data, cfg.image_size, Path(cfg.cache_dir) if cfg.cache_dir else None, cfg.download,
                      quiet=cfg.quiet)
    return len(make_splits(ds, cfg.val_size, cfg.limit_train, cfg.limit_test, cfg.seed).train_x)


def run_pipeline(pipe: Pipeline) -> dict:
    """Every stage in order (groups together), then the comparison; pipeline.json is rewritten after each."""
    console = Console(highlight=False)
    started = time.perf_counter()
    preflight(pipe)
    records: list[dict] = []
    done, total = 0, len(pipe.stages)
    for group in plan_groups(pipe):
        first = done + 1
        done += len(group)
        console.rule(f"stage{'s' if len(group) > 1 else ''} {first}{f'-{done}' if len(group) > 1 else ''}/{total}: "
                     f"{', '.join(s.name for s in group)}")
        if len(group) == 1:
            records.append(run_stage(group[0], pipe.out, console))
        else:
            records += train_stages(group, pipe.out, console)
        write_report(pipe, records, started, finished=False)
    result = compare(pipe.out)
    print_comparison(result)
    total_seconds = write_report(pipe, records, started, finished=True)
    console.print(f"pipeline finished in {minutes(total_seconds)} ({pipe.out / 'pipeline.json'})")
    return result
