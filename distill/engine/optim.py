"""The optimizer and its schedule: Nesterov SGD without weight decay on BatchNorm and biases, pretrained
layers at a lower rate, a linear warm-up then cosine decay per step."""

from __future__ import annotations

import math

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


def make_optimizer(model, cfg, fresh, steps_per_epoch, method_modules=None):
    """Nesterov SGD over the model and the modules a method trains (at the full rate), on the warm-up +
    cosine schedule."""
    groups = param_groups(model, cfg, fresh)
    if method_modules is not None:
        groups += param_groups(method_modules, cfg, set())
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    return opt, sched
