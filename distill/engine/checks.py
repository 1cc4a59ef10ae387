"""Every check a run passes before it writes anything: what a resume may change, what the runs of a group
must share, batch sizes and classes. Each refusal is one line naming what differs and what to do."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from distill.engine import checkpoint as ckpt_io
from distill.engine.folder import check_kind
from distill.engine.state import RESUME_FREE, RESUME_RECORDED
from distill.errors import UserError
from distill.front import config as C
from distill.methods import all_option_names, resolve_options


def require_classes(trained: list[str], data: list[str], path, advice: str) -> None:
    """A model's head fits only the classes it was trained on, in their order."""
    if trained != data:
        raise UserError(f"{path} was trained on classes {classes_text(trained)} but the data has "
                        f"{classes_text(data)}: {advice}")


# Settings every run of a group must share: they fix the batches, the augmentation draws and the step count.
GROUP_SHARED = ("data", "download", "cache_dir", "image_size", "classes", "val_size", "limit_train", "limit_test",
                "seed", "batch_size", "epochs", "augment", "device", "precision", "channels_last", "deterministic",
                "sync_bn", "compile_mode", "dataset", "coarse_labels")


def check_resume(ck: dict, cfg: C.TrainConfig, classes: list[str] | None, path: Path) -> None:
    """Refuse, in one line listing every difference, to continue a run with settings it cannot take."""
    # The kind of run first (teacher, student, baseline): the settings compared below are the command's kind's, and a
    # teacher's command would compare no method and no teacher of a student's checkpoint.
    check_kind(path, ck.get("role"), ck["config"].get("method"), (cfg.role,))
    saved, now = recipe(ck["config"], cfg), recipe(C.to_dict(cfg), cfg)
    if saved.get("data"):  # runs before 2026-11-27 stored --data as typed: relative to where they were started
        saved["data"] = str(Path(saved["data"]).expanduser().resolve())
    diffs = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in now if saved[k] != now[k]]
    if needs_teacher(cfg) and not same_teacher(ck, cfg):
        diffs.append(f"teacher: {cfg.teacher} is not the checkpoint that taught this run (other contents)")
    if classes is not None and ck["classes"] != classes:  # same --data path, new contents: the head no longer fits
        diffs.append(f"classes: {classes_text(ck['classes'])} -> {classes_text(classes)}")
    if diffs:
        raise UserError(f"cannot resume {path} with changed settings ({'; '.join(diffs)}): "
                        f"restore them, or start a new run with --force or another --out")


def recipe(values: dict, cfg: C.TrainConfig) -> dict:
    """The settings that define what a run computes (all but RESUME_FREE and RESUME_RECORDED), a missing one
    (a checkpoint older than the setting) at its default, a method's options as the method resolves them."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    keys = [k for k in fields if k not in RESUME_FREE and k not in RESUME_RECORDED]
    out = {k: values.get(k, fields[k].default) for k in keys}
    if isinstance(cfg, C.StudentConfig):
        options = {k: out.pop(k) for k in all_option_names()}
        method = "none" if out["no_teacher"] else out["method"]
        if method != "none":  # a baseline ignores them
            out.update(method_options=dataclasses.asdict(resolve_options(method, options)))
    return out


def same_teacher(ck: dict, cfg: C.StudentConfig) -> bool:
    """The teacher is the same by content (a moved file is fine); checkpoints from before 2026-12-04 knew
    only its path."""
    digest = (ck.get("teacher") or {}).get("sha256")
    if digest is None:
        return ck["config"].get("teacher") == cfg.teacher
    return digest == ckpt_io.file_sha256(Path(cfg.teacher))


def classes_text(classes: list[str]) -> str:
    return f"{len(classes)} [{', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}]"


def check_group(cfgs: list[C.TrainConfig]) -> None:
    """Runs trained together must agree on everything that fixes their batches and their step count."""
    first = C.to_dict(cfgs[0])
    for cfg in cfgs[1:]:
        now = C.to_dict(cfg)
        diffs = [f"{k}: {first[k]!r} vs {now[k]!r}" for k in GROUP_SHARED if first.get(k) != now.get(k)]
        if diffs:
            raise UserError(f"{cfg.out} cannot train in one group with {cfgs[0].out} ({'; '.join(diffs)}): "
                            f"give them the same settings or train them one by one")
    teachers = {cfg.teacher for cfg in cfgs if needs_teacher(cfg)}
    if len(teachers) > 1:
        raise UserError(f"a group of runs shares one teacher, but these name {len(teachers)}: "
                        f"{', '.join(sorted(teachers))}")


def needs_teacher(cfg: C.TrainConfig) -> bool:
    return isinstance(cfg, C.StudentConfig) and cfg.effective_method != "none"


def check_positions(saved: list[dict | None], outs: list[Path]) -> None:
    """A group steps all its runs together, so they must all start fresh or all stand at the same step."""
    where = {(ck["epoch"], ck["step_in_epoch"]) if ck else (0, 0) for ck in saved}
    if len(where) > 1:
        raise UserError(f"the runs {', '.join(str(o) for o in outs)} stand at different points of training "
                        f"({sorted(where)}): resume each on its own")


def check_batch(cfg: C.TrainConfig, train_images: int, world: int) -> None:
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must split evenly over the "
                        f"{world} processes: use a multiple of {world}")
    if train_images < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {train_images} training images: lower it")
