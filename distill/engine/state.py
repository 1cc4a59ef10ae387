"""A run's state: what one model's run holds while it trains, and its checkpoints (save and restore).

A `Run` is one model's folder, learner and position; a `Group` is the runs one loop trains together
(a single run is a group of one). last.pt holds everything needed to continue exactly where a run
stopped; best.pt holds the weights that are evaluated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.engine import checkpoint as ckpt_io
from distill.front import config as C
from distill.data import Splits
from distill.errors import UserError
from distill.engine.log import RunLogger
from distill.engine.loop import Learner, Loop
from distill.models import unwrap

# What a resumed run may do differently from the run it continues. Free: how it is computed, not what (the
# device and the number of processes, compiling, how often it saves, where the cache is), and the teacher's
# path (its content is checked instead: a moved file is fine). Recorded (in its checkpoints, config.json and
# metrics.json, with the epoch the change took effect): --epochs, whose schedule continues on the new length.
# Every other setting (the recipe, the method and its options, the data) must be the same: a run records one
# recipe, not two.
RESUME_FREE = (*C.NOT_COMPUTED, "out", "device", "compile", "compile_mode", "compile_teacher", "channels_last",
               "deterministic", "sync_bn", "save_every", "cache_dir", "download", "any_teacher", "teacher")
RESUME_RECORDED = ("epochs",)


@dataclass
class Run:
    """One model's run: its folder, logger, learner and position; what a checkpoint must hold to continue."""

    cfg: C.TrainConfig
    out: Path
    spec: dict
    normalization: dict
    classes: list[str]
    learner: Learner
    logger: RunLogger
    is_main: bool = True
    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # steps already done in the current (interrupted) epoch
    best_val: float = -1.0
    eval_weights: str = "model"  # "ema" or "model": whichever scored higher on validation
    wall_seconds: float = 0.0  # summed over resumes
    train_images: int = 0
    train_seconds: float = 0.0
    first_epoch_images: int = 0  # the first epoch pays for compiling and cuDNN's autotuning: reported apart
    first_epoch_seconds: float = 0.0
    teacher_info: dict | None = None
    changes: list = field(default_factory=list)  # settings changed on a resume, with the epoch they took effect
    best_state: dict | None = None  # best weights not yet written to best.pt
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Group:
    """Runs trained together by one loop on one device and one data split (a single run is a group of one)."""

    runs: list[Run]
    loop: Loop
    splits: Splits
    device: torch.device
    teacher_test: dict | None = None  # the teacher's test results, evaluated once for every distilled run
    diverged: list[Run] = field(default_factory=list)  # runs set aside when their loss became non-finite
    locks: list = field(default_factory=list)  # runfolder.RunLock of each run folder, held until the end

    def release(self) -> None:
        for lock in self.locks:
            lock.release()

    @property
    def lead(self) -> Run:
        return self.runs[0]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def base_checkpoint(run: Run, weights: dict, ema: dict | None, eval_weights: str) -> dict:
    return ckpt_io.model_checkpoint(
        role=run.cfg.role, spec=run.spec, model=weights, ema=ema, eval_weights=eval_weights, config=C.to_dict(run.cfg),
        classes=run.classes, normalization=run.normalization, epoch=run.epoch, best_val=run.best_val,
        teacher=run.teacher_info, changes=run.changes)


def save_last(run: Run) -> None:
    """Everything needed to continue: weights, EMA, optimizer, schedule, position, RNG, timers."""
    learner = run.learner
    ema = learner.ema.module.state_dict() if learner.ema else None
    modules = learner.method.modules  # a method's own modules (connectors, memory banks) continue too
    ck = ckpt_io.training_checkpoint(
        base_checkpoint(run, unwrap(learner.model).state_dict(), ema, run.eval_weights),
        method_state=None if modules is None else modules.state_dict(),
        optimizer=learner.optimizer.state_dict(), scheduler=learner.scheduler.state_dict(),
        step_in_epoch=run.step_in_epoch, rng=rng_state(), ema_updates=learner.ema.updates if learner.ema else 0,
        wall_seconds=run.wall_seconds + time.perf_counter() - run.started,
        train_images=run.train_images, train_seconds=run.train_seconds,
        first_epoch_images=run.first_epoch_images, first_epoch_seconds=run.first_epoch_seconds)
    ckpt_io.save_atomic(ck, run.out / "last.pt")


def save_checkpoints(run: Run) -> None:
    """best.pt (if a better model appeared since the last save), then last.pt."""
    if not run.is_main:
        return
    if run.best_state is not None:
        ckpt_io.save_atomic(base_checkpoint(run, run.best_state, None, "model"), run.out / "best.pt")
        run.best_state = None
    save_last(run)


def restore(run: Run, ck: dict) -> None:
    learner = run.learner
    unwrap(learner.model).load_state_dict(ck["model"])
    if learner.method.modules is not None:
        if ck.get("method_state") is None:
            raise UserError(f"{run.out / 'last.pt'} holds no state of --method {run.cfg.method}'s own modules: "
                            f"resume it with the method it was trained with, or start over with --force")
        learner.method.modules.load_state_dict(ck["method_state"])
    if learner.ema is not None and ck.get("ema") is not None:
        learner.ema.module.load_state_dict(ck["ema"])
        learner.ema.updates = ck.get("ema_updates", 0)
    restore_optimizer(learner, ck)
    run.epoch, run.step_in_epoch, run.best_val = ck["epoch"], ck["step_in_epoch"], ck["best_val"]
    run.eval_weights = ck["eval_weights"]
    run.wall_seconds, run.train_images, run.train_seconds = ck["wall_seconds"], ck["train_images"], ck["train_seconds"]
    run.first_epoch_images = ck.get("first_epoch_images", 0)
    run.first_epoch_seconds = ck.get("first_epoch_seconds", 0.0)
    run.changes = [*ck.get("changes", []), *recorded_changes(ck, run)]


def recorded_changes(ck: dict, run: Run) -> list[dict]:
    """The settings a resume may change (build.RESUME_RECORDED) that this resume changes, each with the point
    of the run it took effect at; a teacher that moved but is the same file counts as a change of path."""
    now, saved = C.to_dict(run.cfg), ck["config"]
    changed = [k for k in RESUME_RECORDED if saved.get(k) != now[k]]
    if run.teacher_info is not None and saved.get("teacher") not in (None, now.get("teacher")):
        changed.append("teacher")
    return [{"setting": k, "from": saved.get(k), "to": now[k], "epoch": ck["epoch"], "step": ck["step_in_epoch"]}
            for k in changed]


def restore_optimizer(learner: Learner, ck: dict) -> None:
    """Momentum buffers and the step count from the checkpoint; learning rate, momentum and weight decay
    from this run's settings, with the schedule re-evaluated for this run's total steps. Unchanged
    settings give the saved numbers exactly; more --epochs continue on the longer cosine at once
    (load_state_dict alone would keep the old settings and the old schedule's rate for one step)."""
    optimizer, sched = learner.optimizer, learner.scheduler
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(ck["optimizer"])
    for group, fresh in zip(optimizer.param_groups, settings):
        group.update(fresh)
    sched.load_state_dict({**ck["scheduler"], "base_lrs": sched.base_lrs})
    for group, base, factor in zip(optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * factor(sched.last_epoch)  # LambdaLR's own formula (get_lr warns outside step)


def count_images(run: Run, stats: dict) -> None:
    run.train_images += stats["images"]
    run.train_seconds += stats["seconds"]
    if run.epoch == 0:
        run.first_epoch_images += stats["images"]
        run.first_epoch_seconds += stats["seconds"]


def steady_throughput(run: Run) -> float | None:
    """Training images per second after the first epoch: the speed a longer run converges to."""
    images, seconds = run.train_images - run.first_epoch_images, run.train_seconds - run.first_epoch_seconds
    return images / seconds if images > 0 and seconds > 0 else None
