"""One training run from a config: set up data, models and optimizer, then `fit` with checkpoints.

`distill teach` and `distill student` both end up in `train_run`; the only difference is whether a
teacher and a distillation method take part.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distill import checkpoint as ckpt_io
from distill import config as C
from distill.augment import GpuAugment, Preprocess, parse_augment
from distill.data import Splits, channel_stats, load_dataset, make_splits
from distill.errors import UserError
from distill.evaluation import model_from_checkpoint
from distill.losses import METHODS
from distill.models import build_model, make_spec, new_parameter_names
from distill.runlog import RunLogger
from distill.train import (Interrupted, Loop, ModelEMA, TeacherModel, evaluate, require_classes, seed_epoch,
                           train_one_epoch, unwrap)
from distill import distributed as dist_util
from distill.signals import StopSignals

# Settings a resumed run must share with the run it continues (anything else may change).
MUST_MATCH = ("arch", "data", "image_size", "resize", "batch_size", "val_size", "limit_train", "seed",
              "stem", "method", "no_teacher", "teacher")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{name}': use auto, cpu, cuda or cuda:N")
    return device


def amp_dtype(cfg: C.TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def default_out(cfg: C.TrainConfig) -> Path:
    if cfg.role == "teacher":
        return Path("runs/cifar10") / f"teacher-{cfg.arch}"
    if cfg.role == "baseline":
        return Path("runs/cifar10") / f"baseline-{cfg.arch}"
    return Path("runs/cifar10") / f"student-{cfg.arch}-{cfg.method}"


def prepare_out(cfg: C.TrainConfig) -> Path:
    """Refuse to mix two runs in one folder unless the user says --resume or --force."""
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    has_run = (out / "last.pt").exists() or (out / "config.json").exists()
    if cfg.resume and not (out / "last.pt").exists():
        raise UserError(f"nothing to resume in {out} (no last.pt): drop --resume to start a new run")
    if has_run and not (cfg.resume or cfg.force):
        raise UserError(f"{out} already holds a run: add --resume to continue it or --force to start over")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run folder {out} ({exc.strerror or exc}): choose another --out") from None
    ckpt_io.remove_stale_temps(out)  # left by a run killed mid-save; last.pt itself is always complete
    if cfg.force and not cfg.resume:
        for old in out.glob("events.out.tfevents.*"):
            old.unlink()  # the user asked to start over: old curves would interleave with the new ones
    return out


def check_resume(ck: dict, cfg: C.TrainConfig, classes: list[str], path: Path) -> None:
    """Refuse, in one line listing every difference, to continue a run with settings it cannot take."""
    saved, now = ck["config"], C.to_dict(cfg)
    diffs = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in MUST_MATCH if k in now and saved.get(k) != now.get(k)]
    if ck["classes"] != classes:  # same --data path, different contents: the head no longer fits
        diffs.append(f"classes: {classes_text(ck['classes'])} -> {classes_text(classes)}")
    if diffs:
        raise UserError(f"cannot resume {path} with changed settings ({'; '.join(diffs)}): "
                        f"restore them, or start a new run with --force or another --out")


def classes_text(classes: list[str]) -> str:
    return f"{len(classes)} [{', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}]"


def param_groups(model: nn.Module, cfg: C.TrainConfig, fresh: set[str]) -> list[dict]:
    """No weight decay on BatchNorm and bias; pretrained backbone layers at a lower learning rate."""
    scale = getattr(cfg, "backbone_lr_scale", 1.0) if fresh else 1.0
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        decay = p.ndim > 1
        lr_scale = 1.0 if (not fresh or name in fresh) else scale
        groups.setdefault((decay, lr_scale), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * s}
            for (decay, s), ps in groups.items()]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0, evaluated per batch."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model, cfg, fresh, steps_per_epoch):
    opt = torch.optim.SGD(param_groups(model, cfg, fresh), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    return opt, sched


@dataclass
class Run:
    """A run's mutable state: what a checkpoint must hold to continue exactly where it stopped."""

    cfg: C.TrainConfig
    out: Path
    device: torch.device
    splits: Splits
    spec: dict
    normalization: dict
    loop: Loop
    logger: RunLogger
    is_main: bool = True
    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # steps already done in the current (interrupted) epoch
    best_val: float = -1.0
    eval_weights: str = "model"  # "ema" or "model": whichever scored higher on validation
    wall_seconds: float = 0.0  # summed over resumes
    train_images: int = 0
    train_seconds: float = 0.0
    teacher_info: dict | None = None
    best_state: dict | None = None  # best weights not yet written to best.pt
    started: float = field(default_factory=time.perf_counter)


def load_teacher(cfg: C.StudentConfig, classes: list[str], device: torch.device, channels_last: bool):
    ck = ckpt_io.load_checkpoint(Path(cfg.teacher))
    if ck.get("role") != "teacher" and not cfg.any_teacher:
        raise UserError(f"{cfg.teacher} is a {ck.get('role')} checkpoint, not a teacher: pass --any-teacher "
                        f"to distill from it anyway, or give a checkpoint of `distill teach`")
    require_classes(ck["classes"], classes, cfg.teacher)
    model, pre = model_from_checkpoint(ck, cfg.teacher, device, channels_last)
    info = {"path": str(cfg.teacher), "arch": ck["spec"]["arch"], "role": ck.get("role"),
            "test_accuracy": (ck.get("metrics") or {}).get("test_accuracy")}
    return TeacherModel(model, pre), info


def configure_backends(cfg: C.TrainConfig, device: torch.device) -> None:
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def build_run(cfg: C.TrainConfig) -> Run:
    device = resolve_device(cfg.device)
    rank, world, device = dist_util.init(device)
    configure_backends(cfg, device)
    out = prepare_out(cfg) if rank == 0 else Path(cfg.out or default_out(cfg))
    dist_util.barrier()
    saved = ckpt_io.load_checkpoint(out / "last.pt") if cfg.resume else None
    ds = load_dataset(cfg.data, cfg.image_size, Path(cfg.cache_dir) if cfg.cache_dir else None, cfg.download)
    splits = make_splits(ds, cfg.val_size, cfg.limit_train, cfg.limit_test, cfg.seed)
    if saved is not None:
        check_resume(saved, cfg, splits.classes, out)
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must split evenly over the "
                        f"{world} processes: use a multiple of {world}")
    mean, std = (saved["normalization"]["mean"], saved["normalization"]["std"]) if saved else channel_stats(splits.train_x)
    spec = make_spec(cfg.arch, len(splits.classes), cfg.resize or cfg.image_size, getattr(cfg, "stem", "cifar"))
    weights = getattr(cfg, "weights", "none")
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    torch.manual_seed(cfg.seed)  # initial weights depend on --seed alone, not on what ran before in the process
    model = build_model(spec, "none" if saved else weights)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # The configured weights even on resume: they shape the parameter groups the saved optimizer has.
    loop = make_loop(cfg, model, spec, weights, splits, device, channels_last, (mean, std))
    loop.rank, loop.world_size = rank, world
    run = Run(cfg, out, device, splits, spec, {"mean": mean, "std": std}, loop,
              RunLogger(out, out.name, cfg.epochs, cfg.quiet, saved["epoch"] + 1 if saved else None, enabled=rank == 0),
              is_main=rank == 0)
    if isinstance(cfg, C.StudentConfig) and loop.method.needs_teacher:
        loop.teacher, run.teacher_info = load_teacher(cfg, splits.classes, device, channels_last)
    if saved is not None:
        restore(run, saved)
    compile_models(loop, cfg)
    loop.model = dist_util.wrap(loop.model, device, getattr(cfg, "sync_bn", False))
    return run


def compile_models(loop: Loop, cfg: C.TrainConfig) -> None:
    """torch.compile what the config asks for, after make_loop and restore: the EMA, the checkpoints and
    evaluation hold the plain modules (`unwrap`), so compiling changes no saved key and evaluation's
    odd last batch causes no recompile."""
    if cfg.compile:
        loop.model = torch.compile(loop.model, mode=cfg.compile_mode)
    if getattr(cfg, "compile_teacher", False) and loop.teacher is not None:
        # The teacher always sees full training batches (every step has batch_size images): one shape,
        # so one compile, and under reduce-overhead one CUDA graph replayed every step.
        loop.teacher.model = torch.compile(loop.teacher.model, mode=cfg.compile_mode)


def method_kwargs(cfg: C.TrainConfig) -> dict:
    keys = ("temperature", "alpha", "beta", "kd_warmup_epochs")
    given = {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None}
    return {"label_smoothing": cfg.label_smoothing, **given}


def make_loop(cfg, model, spec, weights, splits, device, channels_last, stats) -> Loop:
    if isinstance(cfg, C.StudentConfig):
        if cfg.effective_method != "none" and not cfg.teacher:
            raise UserError(f"--method {cfg.method} needs --teacher CKPT (or use --no-teacher for the baseline)")
        method = METHODS.create(cfg.effective_method, **method_kwargs(cfg))
    else:
        method = METHODS.create("none", label_smoothing=cfg.label_smoothing)
    augment = GpuAugment(parse_augment(cfg.augment), len(splits.classes))
    train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
    steps = max(1, len(train_x) // cfg.batch_size)
    if len(train_x) < cfg.batch_size:
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train_x)} training images: lower it")
    optimizer, scheduler = make_optimizer(model, cfg, new_parameter_names(spec, weights), steps)
    return Loop(model=model, preprocess=Preprocess(*stats, spec["input_size"]).to(device), optimizer=optimizer,
                scheduler=scheduler, method=method, augment=augment, train_x=train_x, train_y=train_y,
                batch_size=cfg.batch_size, seed=cfg.seed, device=device, amp_dtype=amp_dtype(cfg, device),
                channels_last=channels_last, grad_clip=cfg.grad_clip,
                ema=ModelEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None)


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
    cfg = C.to_dict(run.cfg)
    return {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "role": run.cfg.role, "spec": run.spec,
            "model": weights, "ema": ema, "eval_weights": eval_weights, "config": cfg,
            "classes": run.splits.classes, "normalization": run.normalization, "epoch": run.epoch,
            "best_val": run.best_val}


def save_last(run: Run) -> None:
    """Everything needed to continue: weights, EMA, optimizer, schedule, position, RNG, timers."""
    loop = run.loop
    ema = loop.ema.module.state_dict() if loop.ema else None
    ck = base_checkpoint(run, unwrap(loop.model).state_dict(), ema, run.eval_weights)
    ck.update(optimizer=loop.optimizer.state_dict(), scheduler=loop.scheduler.state_dict(),
              step_in_epoch=run.step_in_epoch, rng=rng_state(), ema_updates=loop.ema.updates if loop.ema else 0,
              wall_seconds=run.wall_seconds + time.perf_counter() - run.started,
              train_images=run.train_images, train_seconds=run.train_seconds)
    ckpt_io.save_atomic(ck, run.out / "last.pt")


def restore(run: Run, ck: dict) -> None:
    loop = run.loop
    model = unwrap(loop.model)
    model.load_state_dict(ck["model"])
    if loop.ema is not None and ck.get("ema") is not None:
        loop.ema.module.load_state_dict(ck["ema"])
        loop.ema.updates = ck.get("ema_updates", 0)
    restore_optimizer(loop, ck)
    set_rng_state(ck["rng"])
    run.epoch, run.step_in_epoch, run.best_val = ck["epoch"], ck["step_in_epoch"], ck["best_val"]
    run.eval_weights = ck["eval_weights"]
    run.wall_seconds, run.train_images, run.train_seconds = ck["wall_seconds"], ck["train_images"], ck["train_seconds"]


def restore_optimizer(loop: Loop, ck: dict) -> None:
    """Momentum buffers and the step count from the checkpoint; learning rate, momentum and weight decay
    from this run's settings, with the schedule re-evaluated for this run's total steps. Unchanged
    settings give the saved numbers exactly; more --epochs continue on the longer cosine at once
    (load_state_dict alone would keep the old settings and the old schedule's rate for one step)."""
    settings = [{k: v for k, v in g.items() if k != "params"} for g in loop.optimizer.param_groups]
    loop.optimizer.load_state_dict(ck["optimizer"])
    for group, fresh in zip(loop.optimizer.param_groups, settings):
        group.update(fresh)
    sched = loop.scheduler
    sched.load_state_dict({**ck["scheduler"], "base_lrs": sched.base_lrs})
    for group, base, factor in zip(loop.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * factor(sched.last_epoch)  # LambdaLR's own formula (get_lr warns outside step)


def validate(run: Run) -> tuple[float, str]:
    """Score the raw and the EMA weights on the validation set; the better one is what we keep."""
    loop, s = run.loop, run.splits
    if len(s.val_x) == 0:
        return float("nan"), "ema" if loop.ema else "model"
    kw = dict(num_classes=len(s.classes), tta=run.cfg.tta, amp_dtype=loop.amp_dtype, channels_last=loop.channels_last)
    scores = {"model": evaluate(unwrap(loop.model), loop.preprocess, s.val_x, s.val_y, **kw)["accuracy"]}
    if loop.ema is not None:
        scores["ema"] = evaluate(loop.ema.module, loop.preprocess, s.val_x, s.val_y, **kw)["accuracy"]
    best = max(scores, key=scores.get)
    return scores[best], best


def end_epoch(run: Run, stats: dict) -> None:
    val_acc, which = validate(run)
    no_val = val_acc != val_acc
    if no_val or val_acc > run.best_val:
        run.best_val, run.eval_weights = (run.best_val if no_val else val_acc), which
        weights = run.loop.ema.module if which == "ema" else unwrap(run.loop.model)
        # Kept on the device until the next save: a ResNet50 checkpoint per epoch costs seconds of disk.
        run.best_state = {k: v.detach().clone() for k, v in weights.state_dict().items()}
    if run.epoch % run.cfg.save_every == 0 or run.epoch == run.cfg.epochs:
        save_checkpoints(run)
    scalars = {"loss/train": stats["loss"], "accuracy/train": stats["accuracy"], "accuracy/val": val_acc,
               "lr": max(g["lr"] for g in run.loop.optimizer.param_groups),
               "throughput/train_images_per_second": stats["images"] / max(stats["seconds"], 1e-9),
               "time/epoch_seconds": stats["seconds"]}
    run.logger.scalars(run.epoch, {k: v for k, v in scalars.items() if v == v})
    run.logger.epoch_line(run.epoch, scalars)


def save_checkpoints(run: Run) -> None:
    """best.pt (if a better model appeared since the last save), then last.pt."""
    if not run.is_main:
        return
    if run.best_state is not None:
        ckpt_io.save_atomic(base_checkpoint(run, run.best_state, None, "model"), run.out / "best.pt")
        run.best_state = None
    save_last(run)


def fit(run: Run, stop: StopSignals) -> None:
    """Epochs from wherever the run stands to cfg.epochs; a stop request saves and raises Interrupted."""
    loop = run.loop
    loop.stop_requested = stop.requested
    loop.on_step = run.logger.step
    while run.epoch < run.cfg.epochs:
        if run.step_in_epoch == 0:
            seed_epoch(run.cfg.seed, run.epoch)
        run.logger.start_epoch(run.epoch, loop.steps_per_epoch, run.step_in_epoch)
        stats = train_one_epoch(loop, run.epoch, run.step_in_epoch)
        run.train_images += stats["images"]
        run.train_seconds += stats["seconds"]
        if not stats["finished"]:
            run.step_in_epoch = stats["next_step"]
            save_checkpoints(run)
            raise Interrupted(f"epoch {run.epoch + 1} step {run.step_in_epoch}")
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
        end_epoch(run, stats)
        if dist_util.any_rank(stop.requested(), run.device):  # under torchrun all ranks stop here, or none
            save_checkpoints(run)
            raise Interrupted(f"after epoch {run.epoch}")


def final_metrics(run: Run) -> dict:
    """Test accuracy of the weights chosen on validation (best.pt), never used to choose anything."""
    from distill.modelinfo import count_params, forward_gflops

    best = ckpt_io.load_checkpoint(run.out / "best.pt")
    model = build_model(run.spec).to(run.device)
    model.load_state_dict(best["model"])
    s, loop = run.splits, run.loop
    test = evaluate(model, loop.preprocess, s.test_x, s.test_y, len(s.classes), tta=run.cfg.tta,
                    amp_dtype=loop.amp_dtype)
    cfg = run.cfg
    if loop.teacher is not None:  # the teacher's accuracy on exactly this test split, for the comparison
        teacher = unwrap(loop.teacher.model)
        run.teacher_info["test_accuracy"] = evaluate(teacher, loop.teacher.preprocess, s.test_x, s.test_y,
                                                     len(s.classes), tta=cfg.tta, amp_dtype=loop.amp_dtype)["accuracy"]
    return {"role": cfg.role, "arch": cfg.arch, "method": getattr(cfg, "effective_method", None),
            "params": count_params(model), "gflops": forward_gflops(model.float(), run.spec["input_size"]),
            "test_accuracy": test["accuracy"], "per_class_accuracy": dict(zip(s.classes, test["per_class"])),
            "best_val_accuracy": None if run.best_val < 0 else run.best_val, "epochs": run.epoch,
            "wall_seconds": run.wall_seconds + time.perf_counter() - run.started,
            "train_images_per_second": run.train_images / max(run.train_seconds, 1e-9),
            "dataset": s.source if hasattr(s, "source") else cfg.data, "train_images": len(s.train_x),
            "test_images": len(s.test_x), "device": device_name(run.device), "teacher": run.teacher_info,
            "eval_weights": run.eval_weights, "tta": cfg.tta, "seed": cfg.seed}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def finish(run: Run) -> dict:
    metrics = final_metrics(run)
    ckpt_io.write_text_atomic(json.dumps(metrics, indent=2), run.out / "metrics.json")
    run.logger.scalars(run.epoch, {"accuracy/test": metrics["test_accuracy"]})
    hp = {k: v for k, v in C.to_dict(run.cfg).items() if v is not None and k not in ("config", "quiet", "resume", "force")}
    hp["role"] = run.cfg.role
    run.logger.hparams(hp, {"hparam/test_accuracy": metrics["test_accuracy"],
                            "hparam/best_val_accuracy": metrics["best_val_accuracy"] or 0.0})
    return metrics


def write_config(run: Run) -> None:
    ckpt_io.write_text_atomic(json.dumps({**C.to_dict(run.cfg), "role": run.cfg.role, "spec": run.spec}, indent=2),
                              run.out / "config.json")


def train_run(cfg: C.TrainConfig) -> dict:
    """Build, fit and evaluate one run; Ctrl-C/SIGTERM save a resumable checkpoint and exit 130/143."""
    run = build_run(cfg)
    try:
        with StopSignals(announce=run.is_main) as stop:
            if run.is_main:
                write_config(run)
            try:
                fit(run, stop)
            except Interrupted as where:
                run.logger.close()
                if not run.is_main:
                    raise SystemExit(stop.exit_code) from None  # rank 0 prints the one message
                launcher = "torchrun <same options> -m " if run.loop.world_size > 1 else ""
                resume = f"{launcher}distill {'teach' if cfg.role == 'teacher' else 'student'} --out {run.out} --resume"
                raise UserError(f"interrupted ({where}); saved {run.out / 'last.pt'}. Resume with: {resume} "
                                f"(plus your other options)", exit_code=stop.exit_code) from None
        metrics = finish(run) if run.is_main else {}
        run.logger.say(f"{run.out.name}: test accuracy {metrics.get('test_accuracy', float('nan')):.4f} "
                       f"({run.out / 'metrics.json'})")
        return metrics
    except torch.OutOfMemoryError:
        raise out_of_memory(run) from None
    finally:
        run.logger.close()
        dist_util.shutdown()


def out_of_memory(run: Run) -> UserError:
    last = run.out / "last.pt"
    kept = f"{last} is kept (continue with --resume)" if last.exists() else "no checkpoint had been written yet"
    bf16 = "" if run.loop.amp_dtype is not None else " or use --precision bf16"  # already bf16: no advice
    return UserError(f"out of GPU memory in epoch {run.epoch + 1} with --batch-size {run.cfg.batch_size}: lower "
                     f"--batch-size (and --lr in proportion){bf16}; {kept}")
