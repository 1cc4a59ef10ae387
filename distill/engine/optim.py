"""The optimizer and its schedule: Nesterov SGD without weight decay on BatchNorm and biases, pretrained
layers at a lower rate (or decayed layer by layer), a linear warm-up then cosine decay per step or step decay
at epoch milestones; and the fine-tuning schedules that freeze pretrained stages for the first epochs (`Freezing`).

Every phase of a schedule is a function of the epoch (which stages are frozen) or of the step (the rates), so a
run resumed in the middle of a phase continues it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from distill.front import config as C

StageOf = Callable[[str], int]  # a parameter's or module's name -> its stage: 0 the stem ... depth the head


def lr_scale(cfg: C.TrainConfig, name: str, fresh: set[str], stage_of: StageOf | None, depth: int) -> float:
    """A parameter's share of --lr: new ones (the head, a derived stem) the full rate; pretrained ones
    --backbone-lr-scale, or with --layer-decay decay^(depth - stage), the head's depth being the full rate."""
    if not fresh or name in fresh:
        return 1.0
    decay = getattr(cfg, "layer_decay", 1.0)
    if decay != 1 and stage_of is not None:
        return decay ** (depth - stage_of(name))
    return getattr(cfg, "backbone_lr_scale", 1.0)


def param_groups(model: nn.Module, cfg: C.TrainConfig, fresh: set[str], stage_of: StageOf | None = None,
                 depth: int = 0) -> list[dict]:
    """No weight decay on BatchNorm and bias; each group one rate (see lr_scale), kept as `lr_scale`."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        groups.setdefault((p.ndim > 1, lr_scale(cfg, name, fresh, stage_of, depth)), []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * s, "lr_scale": s}
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


def phase_factor(cfg: C.TrainConfig, group: dict, steps_per_epoch: int) -> Callable[[int], float]:
    """A group's rate across the phases of a fine-tuning schedule. LP-FT: after the probe every layer, the head
    too, trains at --lr x --backbone-lr-scale; other schedules keep one rate throughout."""
    if getattr(cfg, "unfreeze", "all") != "lp-ft":
        return lambda step: 1.0
    probe_steps, after = cfg.freeze_epochs * steps_per_epoch, cfg.backbone_lr_scale / group["lr_scale"]
    return lambda step: 1.0 if step < probe_steps else after


def make_optimizer(model, cfg, fresh, steps_per_epoch, method_modules=None, stage_of=None, depth=0):
    """Nesterov SGD over the model and the modules a method trains (at the full rate), on the warm-up then
    --schedule's decay, each group through the phases of its fine-tuning schedule."""
    groups = param_groups(model, cfg, fresh, stage_of, depth)
    if method_modules is not None:
        groups += param_groups(method_modules, cfg, set())
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    schedule = SCHEDULE_FACTORS[cfg.schedule](cfg, steps_per_epoch, warmup)
    phases = [phase_factor(cfg, group, steps_per_epoch) for group in groups]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s, phase=phase: schedule(s) * phase(s) for phase in phases])
    return opt, sched


@dataclass
class Freezing:
    """Which pretrained stages a fine-tuning schedule freezes in an epoch. A frozen stage is left exactly as it
    is: its BatchNorm layers run in eval mode (running statistics untouched) and its parameters' gradients are
    dropped before the step, so SGD skips them (no weight decay, no momentum). Gradients are dropped rather
    than never computed (requires_grad): DistributedDataParallel fixes the parameters it reduces when it wraps
    the model, and torch.compile would recompile at each change."""

    stage_of: StageOf
    thaw: list[int]  # the epoch each pretrained stage starts training, from the stem up; the head always trains
    freeze_bn: bool  # every BatchNorm layer in eval mode throughout (--freeze-bn)
    frozen: list[nn.Parameter] = field(default_factory=list)  # this epoch's frozen parameters

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """After model.train(): this epoch's frozen stages, found by name (a BatchNorm layer may have been
        converted to SyncBatchNorm since the schedule was made; parameters are kept by the conversion)."""
        stages = {i for i, thaw in enumerate(self.thaw) if epoch < thaw}
        self.frozen = [p for name, p in model.named_parameters() if self.stage_of(name) in stages]
        for name, module in model.named_modules():
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            if is_norm and (self.freeze_bn or self.stage_of(name) in stages):
                module.eval()

    def drop_gradients(self) -> None:
        for p in self.frozen:
            p.grad = None


def make_freezing(cfg: C.TrainConfig, stage_of: StageOf | None, depth: int) -> Freezing | None:
    """The schedule's frozen stages: after --freeze-epochs all at once, or (gradual) layer4 first and one more
    stage below each epoch (ULMFiT), the stem in epoch freeze_epochs + depth (from 1), which the command line
    holds within --epochs (config.check_gradual). None when nothing is ever frozen."""
    freeze_epochs, unfreeze = getattr(cfg, "freeze_epochs", 0), getattr(cfg, "unfreeze", "all")
    freeze_bn = getattr(cfg, "freeze_bn", False)
    if stage_of is None or not (freeze_epochs or unfreeze != "all" or freeze_bn):
        return None
    gradual = unfreeze == "gradual"
    return Freezing(stage_of, [freeze_epochs + (depth - 1 - i if gradual else 0) for i in range(depth)], freeze_bn)
