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

import json
import time
from pathlib import Path

from rich.console import Console

from distill.front import config as C
from distill.engine.checkpoint import write_text_atomic
from distill.experiments.compare import compare, print_comparison
from distill.text import minutes
from distill.errors import UserError
from distill.engine.checkpoint import load_checkpoint
from distill.engine.build import with_resolved_data
from distill.engine.checks import GROUP_SHARED, RESUME_FREE
from distill.experiments.plan import (Pipeline, Stage, check_data_paths, load_pipeline,  # noqa: F401  (re-exported)
                                   pending_configs, stage_status)
from distill.engine.run import train_group


def changed_settings(stage: Stage, out: Path) -> list[str]:
    """Options of a finished stage that differ from the file now: it is skipped all the same, so say so. Compared
    as a run records them (--data resolved), and only those a resume could not change freely (not --device)."""
    path = out / stage.name / "config.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    planned = C.to_dict(with_resolved_data(stage.config(out)))
    return [k for k, v in planned.items() if k not in RESUME_FREE and k in saved and saved[k] != v]


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
    """Each teacher alone (the stages after it read its best.pt; a transfer experiment has several), then students
    and baselines that share their batches (GROUP_SHARED) and stand at the same step together; finished stages
    alone (they are skipped)."""
    groups: dict[tuple, list[Stage]] = {}
    for i, stage in enumerate(pipe.stages):
        if stage.cls is C.TeachConfig or not pipe.train_together or stage_status(pipe.out / stage.name) == "skipped":
            groups[("alone", i)] = [stage]
            continue
        cfg = C.to_dict(stage.config(pipe.out))
        key = tuple(repr(cfg[k]) for k in GROUP_SHARED) + position(stage, pipe.out)
        groups.setdefault(key, []).append(stage)
    return list(groups.values())


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
    check_data_paths(pipe)  # also on the command line, before torch: here for a pipeline run from Python
    make_out_folder(pipe.out)
    cfgs = pending_configs(pipe)
    sizes: dict[tuple, int] = {}
    for name, cfg in cfgs:
        key = (cfg.data, cfg.dataset, cfg.coarse_labels, cfg.image_size, cfg.cache_dir, cfg.classes, cfg.val_size,
               cfg.limit_train, cfg.seed)
        if key not in sizes:
            sizes[key] = training_images(cfg)
        if cfg.batch_size > sizes[key]:
            raise UserError(f"stage {name}: --batch-size {cfg.batch_size} is larger than its {sizes[key]} training "
                            f"images: lower batch_size in the config")


def training_images(cfg: C.TrainConfig) -> int:
    """How many training images a stage gets (decoding its data once; later stages read the cache)."""
    from distill.data import load_dataset, make_splits

    ds = load_dataset(cfg.data, cfg.image_size, Path(cfg.cache_dir) if cfg.cache_dir else None, cfg.download,
                      quiet=cfg.quiet, dataset=cfg.dataset, coarse_labels=cfg.coarse_labels)
    return len(make_splits(ds, cfg.val_size, cfg.limit_train, cfg.limit_test, cfg.seed,
                           C.parse_classes(cfg.classes)).train_x)


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
