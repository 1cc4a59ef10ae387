"""The optimizer and its schedule: Nesterov SGD without weight decay on BatchNorm and biases, pretrained
layers at a lower rate, a linear warm-up then cosine decay per step, or step decay at epoch milestones."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from distill.front import config as C


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


def step_factor(step: int, steps_per_epoch: int, warmup: int, milestones: tuple[int, ...], decay: float) -> float:
    """Linear warm-up to 1, times `decay` once for each milestone epoch already completed: constant within an
    epoch, as RepDistiller's adjust_learning_rate sets it (lr * decay ** milestones passed) at each epoch's start."""
    ramp = (step + 1) / warmup if step < warmup else 1.0
    passed = sum(step >= m * steps_per_epoch for m in milestones)
    return ramp * decay ** passed


def cosine_schedule(cfg: C.TrainConfig, steps_per_epoch: int, warmup: int) -> Callable[[int], float]:
    total = cfg.epochs * steps_per_epoch
    return lambda step: lr_factor(step, total, warmup)


def step_schedule(cfg: C.TrainConfig, steps_per_epoch: int, warmup: int) -> Callable[[int], float]:
    milestones, decay = C.parse_milestones(cfg.milestones), cfg.lr_decay
    return lambda step: step_factor(step, steps_per_epoch, warmup, milestones, decay)


# --schedule NAME -> its learning-rate factor per step. Each is a plain function of the step and the run's settings
# (never an object with state): LambdaLR saves no plain function in its state_dict, so a resume evaluates this run's
# schedule at the saved step (engine/state.py restore_optimizer) instead of loading an old one.
SCHEDULE_FACTORS = {"cosine": cosine_schedule, "step": step_schedule}


def make_optimizer(model, cfg, fresh, steps_per_epoch, method_modules=None):
    """Nesterov SGD over the model and the modules a method trains (at the full rate), on the warm-up then
    --schedule's decay."""
    groups = param_groups(model, cfg, fresh)
    if method_modules is not None:
        groups += param_groups(method_modules, cfg, set())
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULE_FACTORS[cfg.schedule](cfg, steps_per_epoch, warmup))
    return opt, sched
