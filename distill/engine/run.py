"""Training runs end to end: `train_run` (teach, student) and `train_group` (a pipeline's students and
baselines together): build, fit epoch by epoch with validation and checkpoints, then test and report.
"""

from __future__ import annotations

import json

import torch

from distill.engine import checkpoint as ckpt_io
from distill.front import config as C
from distill.engine import distributed as dist_util
from distill.engine.build import build_group
from distill.errors import UserError
from distill.engine.results import (
    add_gains,
    eval_kwargs,
    final_metrics,
    log_summary,
    test_best,
    warn_weak_teachers,
    write_predictions,
)
from distill.engine.folder import resume_command
from distill.engine.state import Group, Run, count_images, save_checkpoints
from distill.engine.signals import StopSignals
from distill.engine.loop import Hooks, Interrupted, NonFiniteLoss, diverged_message, seed_epoch, train_one_epoch
from distill.engine.evaluate import evaluate
from distill.models import unwrap


def validate(group: Group, run: Run) -> tuple[float, str]:
    """Score the raw and the EMA weights on the validation set; the better one is what we keep. Without a
    validation set (--val-size 0) nothing is chosen: the EMA when there is one, else the raw weights."""
    learner, s = run.learner, group.splits
    if len(s.val_x) == 0:
        return float("nan"), "ema" if learner.ema else "model"
    kw = eval_kwargs(group, run.cfg)
    scores = {"model": evaluate(unwrap(learner.model), learner.preprocess, s.val_x, s.val_y, **kw)["accuracy"]}
    if learner.ema is not None:
        scores["ema"] = evaluate(learner.ema.module, learner.preprocess, s.val_x, s.val_y, **kw)["accuracy"]
    best = max(scores, key=scores.get)
    return scores[best], best


def end_epoch(group: Group, run: Run, stats: dict) -> None:
    """Validate, keep the best weights (the last ones without a validation set), save, log."""
    val_acc, which = validate(group, run)
    no_val = val_acc != val_acc
    if no_val or val_acc > run.best_val:
        run.best_val, run.eval_weights = (run.best_val if no_val else val_acc), which
        weights = run.learner.ema.module if which == "ema" else unwrap(run.learner.model)
        # Kept on the device until the next save: a ResNet50 checkpoint per epoch costs seconds of disk.
        run.best_state = {k: v.detach().clone() for k, v in weights.state_dict().items()}
    if run.epoch % run.cfg.save_every == 0 or run.epoch == run.cfg.epochs:
        save_checkpoints(run)
    scalars = {"loss/train": stats["loss"], "accuracy/train": stats["accuracy"], "accuracy/val": val_acc,
               "lr": max(g["lr"] for g in run.learner.optimizer.param_groups),
               "throughput/train_images_per_second": stats["images"] / max(stats["seconds"], 1e-9),
               "time/epoch_seconds": stats["seconds"]}
    run.logger.scalars(run.epoch, {k: v for k, v in scalars.items() if v == v})
    run.logger.epoch_line(run.epoch, scalars)


def step_hook(lead: Run):
    """After each step: the progress shown by the lead run's logger."""
    return lead.logger.step


def fit(group: Group, stop: StopSignals) -> None:
    """Epochs from wherever the runs stand to cfg.epochs; a stop request saves and raises Interrupted."""
    loop = group.loop
    hooks = Hooks(stop_requested=stop.requested, on_step=step_hook(group.lead))
    while group.lead.epoch < group.lead.cfg.epochs:
        lead = group.lead  # the first run still training (a diverged one is set aside)
        if lead.step_in_epoch == 0:
            seed_epoch(lead.cfg.seed, lead.epoch)
        lead.logger.start_epoch(lead.epoch, loop.steps_per_epoch, lead.step_in_epoch, images=len(loop.train_x),
                                device=group.device)
        stats = train_one_epoch(loop, lead.epoch, lead.step_in_epoch, hooks)
        for run, s in zip(group.runs, stats):
            count_images(run, s)
        stats = set_aside_diverged(group, stats)
        if not stats[0]["finished"]:
            for run in group.runs:
                run.step_in_epoch = stats[0]["next_step"]
                save_checkpoints(run)
            raise Interrupted(f"epoch {group.lead.epoch + 1} step {group.lead.step_in_epoch}")
        for run, s in zip(group.runs, stats):
            run.epoch, run.step_in_epoch = run.epoch + 1, 0
            end_epoch(group, run, s)
        if dist_util.any_rank(stop.requested(), group.device):  # under torchrun all ranks stop here, or none
            for run in group.runs:
                save_checkpoints(run)
            raise Interrupted(f"after epoch {group.lead.epoch}")


def set_aside_diverged(group: Group, stats: list[dict]) -> list[dict]:
    """Runs whose loss became non-finite leave the group, their checkpoints as last written (never diverged
    weights); the others go on, on the same batches. Returns the stats of those that go on."""
    keep = [i for i, run in enumerate(group.runs) if not run.learner.diverged]
    for i, run in enumerate(group.runs):
        if i not in keep:
            run.logger.result(run.learner.diverged)
            group.diverged.append(run)
    group.runs = [group.runs[i] for i in keep]
    group.loop.learners = [run.learner for run in group.runs]
    return [stats[i] for i in keep]


def finish(group: Group) -> list[dict]:
    """Test every run's kept weights, compare the runs trained together, write what they report.
    metrics.json is written last: it marks a run as finished."""
    tested = [test_best(group, run) for run in group.runs]
    metrics = [final_metrics(group, run, test, model) for run, (test, model) in zip(group.runs, tested)]
    add_gains(group, metrics, [test["probs"] for test, _ in tested])
    for run, m, (test, _) in zip(group.runs, metrics, tested):
        write_predictions(group, run, test["probs"])
        ckpt_io.write_text_atomic(json.dumps(m, indent=2), run.out / "metrics.json")
        log_summary(run, m, test["probs"], group.splits.test_y)
        run.logger.result(f"{run.out.name}: test accuracy {100 * m['test_accuracy']:.2f}% ({run.out / 'metrics.json'})")
    warn_weak_teachers(group, metrics)
    return metrics


def write_config(run: Run) -> None:
    """The resolved config, and the settings a resume changed (with the epoch each took effect)."""
    ckpt_io.write_text_atomic(json.dumps({**C.to_dict(run.cfg), "role": run.cfg.role, "spec": run.spec,
                                          "changes": run.changes}, indent=2), run.out / "config.json")


def train_run(cfg: C.TrainConfig) -> dict:
    """Build, fit and evaluate one run; Ctrl-C/SIGTERM save a resumable checkpoint and exit 130/143."""
    return train_group([cfg])[0]


def train_group(cfgs: list[C.TrainConfig]) -> list[dict]:
    """Build, fit and evaluate runs that train together; metrics per run ({} on ranks other than 0)."""
    group = build_group(cfgs)
    lead = group.lead
    try:
        with StopSignals(announce=lead.is_main) as stop:
            for run in group.runs:
                if run.is_main:
                    write_config(run)
            try:
                fit(group, stop)
            except Interrupted as where:
                raise interrupted(group, str(where), stop.exit_code) from None
        metrics = finish(group) if lead.is_main else [{} for _ in group.runs]
        if group.diverged:  # the others finished: their metrics.json are written, a rerun skips them
            raise NonFiniteLoss(diverged_message([run.learner for run in group.diverged]))
        return metrics
    except torch.OutOfMemoryError:
        raise out_of_memory(group) from None
    finally:
        for run in group.runs + group.diverged:
            run.logger.close()
        group.release()
        dist_util.shutdown()


def interrupted(group: Group, where: str, exit_code: int) -> BaseException:
    """The one message after a stop request (rank 0 says it; other ranks just exit)."""
    if not group.lead.is_main:
        return SystemExit(exit_code)
    lead = group.lead
    launcher = "torchrun <same options> -m " if group.loop.world_size > 1 else ""
    command = "teach" if lead.cfg.role == "teacher" else "student"
    resume = f"{resume_command(command, lead.out, launcher)} (plus your other options)"
    saved = ", ".join(str(run.out / "last.pt") for run in group.runs)
    return UserError(f"interrupted ({where}); saved {saved}. Resume with: {resume}", exit_code=exit_code)


def out_of_memory(group: Group) -> UserError:
    lead = group.lead
    last = lead.out / "last.pt"
    kept = f"{last} is kept (continue with --resume)" if last.exists() else "no checkpoint had been written yet"
    bf16 = "" if group.loop.amp_dtype is not None else " or use --precision bf16"  # already bf16: no advice
    return UserError(f"out of GPU memory in epoch {lead.epoch + 1} with --batch-size {lead.cfg.batch_size}: lower "
                     f"--batch-size (and --lr in proportion){bf16}; {kept}")
