"""`distill transfer`: pretrain a backbone on some classes, transfer it to other classes with few labels (from
scratch, fine-tuned, LP-FT, ...), and distil a transferred teacher into a small student, from one TOML file:

    [common]            # every run: options of teach and student alike (image_size, batch_size, device, ...)
    [teacher]           # `distill teach` options of the pretraining and of every transfer (arch, stem, lr, ...)
    [pretrain]          # the pretraining's own: classes = "0-4", epochs, ... (stage teacher-<arch>-pretrain)
    [target]            # every run on the target task: classes = "5-9", limit_train (the few labels), val_size, ...
    [transfers.NAME]    # one `distill teach` run on the target each (stage teacher-<arch>-NAME): weights = "pretrain"
                        # starts from the pretraining's best.pt (a new head), with any fine-tuning schedule
    [[students]]        # `distill student` on the target, taught by the transfer `teacher = "NAME"`
    baselines = true    # optional: one --no-teacher run per student arch, as in a pipeline
    train_together = true

A transfer experiment is a pipeline whose stages are more teachers: this file only reads the plan (without torch);
`distill.experiments.pipeline.run_pipeline` runs it, so its stages are skipped when finished and resumed when
interrupted, students and baselines train together, and `distill compare` closes it, exactly as in a pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path

from distill.errors import UserError
from distill.experiments.plan import (MANAGED, Pipeline, Stage, baseline_tables, check_table, check_top, check_unique,
                                      common_values, make_stage, student_tables)
from distill.front import config as C

TOP_KEYS = ("baselines", "common", "pretrain", "students", "target", "teacher", "train_together", "transfers")
PRETRAINED = "pretrain"  # weights = "pretrain" in a transfer: the pretraining stage's best.pt


def teach_values(raw: dict, key: str, source: str) -> dict:
    where = f"{source} [{key}]"
    return C.values_from_mapping(C.TeachConfig, check_table(raw.get(key, {}), where, MANAGED), where)


def transfer_stages(raw: dict, base: dict, overrides: dict, pretrained: str, source: str) -> dict[str, Stage]:
    """One teach stage on the target task per [transfers.NAME] table, by NAME."""
    tables = raw.get("transfers")
    if not isinstance(tables, dict) or not tables:
        raise UserError(f"{source}: no [transfers.NAME] tables: add one per way of starting on the target, e.g. "
                        f"[transfers.finetune] weights = \"pretrain\"")
    stages = {}
    for name, table in tables.items():
        where = f"{source} [transfers.{name}]"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name == PRETRAINED:
            raise UserError(f"{where}: a transfer's name becomes its folder's: use letters, digits, '-', '_' and '.' "
                            f"(and not '{PRETRAINED}')")
        values = C.values_from_mapping(C.TeachConfig, check_table(table, where, MANAGED), where)
        if values.get("weights") == PRETRAINED:
            values["weights"] = pretrained
        stages[name] = make_stage(C.TeachConfig, base | values | overrides, where, f"-{name}")
    return stages


def student_stages(raw: dict, base: dict, overrides: dict, teachers: dict[str, Stage], out: Path,
                   source: str) -> list[Stage]:
    """Each student taught by the transfer it names, then (unless baselines = false) one baseline per arch."""
    tables = raw.get("students", [])
    untaught = [{k: v for k, v in t.items() if k != "teacher"} if isinstance(t, dict) else t for t in tables] \
        if isinstance(tables, list) else tables
    students = student_tables({"students": untaught}, source)  # each table checked as a pipeline's
    stages = []
    for i, (table, values) in enumerate(zip(tables, students), start=1):
        where = f"{source} [[students]] #{i}"
        if table.get("teacher") not in teachers:
            raise UserError(f"{where}: 'teacher' must name one of the transfers ({', '.join(teachers)}), "
                            f"got {table.get('teacher')!r}")
        taught = {"teacher": str(out / teachers[table["teacher"]].name / "best.pt")}
        stages.append(make_stage(C.StudentConfig, base | values | taught | overrides, where))
    if raw.get("baselines", True):
        stages += [make_stage(C.StudentConfig, base | b | overrides, f"{source} baseline of {b['arch']}")
                   for b in baseline_tables(students)]
    return stages


def load_transfer(path: Path, overrides: dict, out: str | None = None, sets: dict | None = None) -> Pipeline:
    """Read and validate the whole plan; `overrides` (data, device, quiet) and `sets` (--set) beat the file."""
    source = str(path)
    raw = C.read_toml(path)
    check_top(raw, source, TOP_KEYS, teacher_needed=False)
    common = common_values(raw.get("common", {}), f"{source} [common]")
    overrides = common_values(sets or {}, "--set") | overrides
    out_dir = Path(out) if out else Path("runs") / path.stem
    teacher = common | teach_values(raw, "teacher", source)
    target = common_values(raw.get("target", {}), f"{source} [target]")
    pretrain = make_stage(C.TeachConfig, teacher | teach_values(raw, "pretrain", source) | overrides,
                          f"{source} [pretrain]", f"-{PRETRAINED}")
    transfers = transfer_stages(raw, teacher | target, overrides, str(out_dir / pretrain.name / "best.pt"), source)
    students = student_stages(raw, common | target, overrides, transfers, out_dir, source)
    stages = [pretrain, *transfers.values(), *students]
    check_unique(stages, out_dir, source)
    return Pipeline(path, out_dir, stages, raw.get("train_together", True))
