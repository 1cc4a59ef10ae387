"""The training loop: `train_one_epoch`, `evaluate` and `fit`, readable top to bottom.

Data lives on the training device as uint8; each step indexes a batch out of a per-epoch
permutation, augments it on the device, and (for distillation) runs the teacher on the same
augmented batch. Nothing in the step waits for the host except an occasional finiteness check.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from distill.augment import GpuAugment, Preprocess, to_float
from distill.distributed import all_reduce_sum, any_rank
from distill.errors import UserError

FINITE_CHECK_EVERY = 50  # steps between host syncs that look for a non-finite loss
STOP_SYNC_EVERY = 10  # under torchrun, steps between the ranks' agreement on a stop request
# Test-only hook: seconds to sleep after each step, so tests can signal a run mid-epoch. Read here only.
TEST_STEP_SLEEP = float(os.environ.get("DISTILL_TEST_STEP_SLEEP", "0"))


class Interrupted(Exception):
    """Raised by the loop after a stop request (SIGINT/SIGTERM) once state is consistent."""


class NonFiniteLoss(UserError):
    """A user error: the recipe diverged (learning rate, precision); the message says what to change."""


class ModelEMA:
    """Exponential moving average of the weights, with a warm-up so short runs still benefit."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        self._tensors: tuple[nn.Module, list, list, list, list] | None = None  # built once, not every step

    def tensor_lists(self, model: nn.Module) -> tuple[list, list, list, list]:
        if self._tensors is None or self._tensors[0] is not model:
            self._tensors = (model, list(self.module.parameters()), [p.detach() for p in model.parameters()],
                             list(self.module.buffers()), list(model.buffers()))
        return self._tensors[1:]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_p, live_p, ema_b, live_b = self.tensor_lists(model)
        torch._foreach_lerp_(ema_p, live_p, 1 - decay)
        torch._foreach_copy_(ema_b, live_b)  # BatchNorm statistics follow the live model


@dataclass
class TeacherModel:
    model: nn.Module
    preprocess: Preprocess


@dataclass
class Loop:
    """Everything a step needs, built once per run by distill.run."""

    model: nn.Module
    preprocess: Preprocess
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    method: object  # distill.losses.Method
    augment: GpuAugment
    train_x: Tensor
    train_y: Tensor
    batch_size: int
    seed: int
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    grad_clip: float = 0.0
    ema: ModelEMA | None = None
    teacher: TeacherModel | None = None
    rank: int = 0
    world_size: int = 1
    stop_requested: callable = field(default=lambda: False)
    on_step: callable = field(default=lambda step, steps: None)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_x) // self.batch_size)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> Tensor:
    """Batch order depends only on (seed, epoch): runs with one seed see the same batches, and a
    resumed run rebuilds the interrupted epoch's order exactly."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen, device=device)


def seed_epoch(seed: int, epoch: int) -> None:
    """Augmentation draws from torch's global RNG, reseeded per epoch for the same reason."""
    torch.manual_seed(seed * 1_000_003 + epoch + 1)


def model_input(x: Tensor, preprocess: Preprocess, channels_last: bool) -> Tensor:
    x = preprocess(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(loop: Loop, x_u8: Tensor, y: Tensor, progress: float) -> tuple[Tensor, Tensor]:
    x, targets = loop.augment(x_u8, y)
    with autocast(loop.device, loop.amp_dtype):
        logits = loop.model(model_input(x, loop.preprocess, loop.channels_last))
        teacher_logits = None
        if loop.teacher is not None:
            with torch.no_grad():  # the teacher sees exactly the student's augmented batch
                teacher_logits = loop.teacher.model(model_input(x, loop.teacher.preprocess, loop.channels_last))
    loss, _ = loop.method(logits, teacher_logits, targets, progress)
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if loop.grad_clip > 0:
        nn.utils.clip_grad_norm_(loop.model.parameters(), loop.grad_clip)
    loop.optimizer.step()
    loop.scheduler.step()
    if loop.ema is not None:
        loop.ema.update(unwrap(loop.model))
    correct = (logits.detach().argmax(1) == targets.argmax(1)).sum()
    return loss.detach(), correct


def rank_batch(perm: Tensor, step: int, loop: Loop) -> Tensor:
    """This rank's slice of global batch `step` (the whole batch on a single process)."""
    batch = perm[step * loop.batch_size:(step + 1) * loop.batch_size]
    return batch.chunk(loop.world_size)[loop.rank] if loop.world_size > 1 else batch


def train_one_epoch(loop: Loop, epoch: int, start_step: int = 0) -> dict:
    """Train from `start_step` to the end of the epoch (or until a stop is requested)."""
    loop.model.train()
    perm = epoch_permutation(len(loop.train_x), loop.seed, epoch, loop.device)
    steps = loop.steps_per_epoch
    loss_sum = torch.zeros((), device=loop.device)
    correct = torch.zeros((), device=loop.device, dtype=torch.long)
    seen, step, started = 0, start_step, time.perf_counter()
    while step < steps and not stop_now(loop, step):
        idx = rank_batch(perm, step, loop)
        loss, right = train_step(loop, loop.train_x[idx], loop.train_y[idx], epoch + step / steps)
        loss_sum += loss * len(idx)
        correct += right
        seen += len(idx)
        step += 1
        if step % FINITE_CHECK_EVERY == 0 and step < steps:  # the last step is checked below
            check_finite(all_reduce_sum(loss_sum.clone()), epoch, step)
        loop.on_step(step, steps)
        if TEST_STEP_SLEEP:
            time.sleep(TEST_STEP_SLEEP)
    all_reduce_sum(loss_sum)  # every rank reports the global epoch figures (no-op on one process)
    all_reduce_sum(correct)
    # Also when stopping early: the caller saves last.pt next, and must never save diverged weights.
    check_finite(loss_sum, epoch, step)
    seconds = time.perf_counter() - started  # after check_finite's sync: queued GPU work is counted
    done = max(seen * loop.world_size, 1)
    return {"loss": loss_sum.item() / done, "accuracy": correct.item() / done, "images": seen * loop.world_size,
            "seconds": seconds, "next_step": step, "finished": step >= steps}


def stop_now(loop: Loop, step: int) -> bool:
    """Alone, stop at the next step. Under torchrun every rank must stop at the same step (DDP's next
    gradient all-reduce would wait forever for a rank that stopped), so they agree every few steps."""
    if loop.world_size == 1:
        return loop.stop_requested()
    return step % STOP_SYNC_EVERY == 0 and any_rank(loop.stop_requested(), loop.device)


def check_finite(loss_sum: Tensor, epoch: int, step: int) -> None:
    """`loss_sum` summed over ranks, so that every rank raises together."""
    if not math.isfinite(loss_sum.item()):
        raise NonFiniteLoss(
            f"the training loss became non-finite in epoch {epoch + 1} by step {step}: lower --lr, "
            f"set --grad-clip, or use --precision fp32; the last good checkpoint is kept"
        )


@torch.no_grad()
def predict(model: nn.Module, preprocess: Preprocess, x_u8: Tensor, batch_size: int, tta: bool,
            amp_dtype: torch.dtype | None, channels_last: bool) -> Tensor:
    """Class predictions for uint8 images, batched; `tta` averages with the mirrored image."""
    model.eval()
    device = next(model.parameters()).device
    preds = []
    for start in range(0, len(x_u8), batch_size):
        x = to_float(x_u8[start:start + batch_size].to(device, non_blocking=True))
        with autocast(device, amp_dtype):
            probs = model(model_input(x, preprocess, channels_last)).float().softmax(1)
            if tta:
                probs += model(model_input(x.flip(3), preprocess, channels_last)).float().softmax(1)
        preds.append(probs.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=device)


def evaluate(model: nn.Module, preprocess: Preprocess, x_u8: Tensor, y: Tensor, num_classes: int,
             batch_size: int = 1024, tta: bool = False, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False) -> dict:
    """Accuracy and per-class accuracy (both 0..1) on a labelled uint8 set."""
    if len(x_u8) == 0:
        return {"accuracy": float("nan"), "per_class": [float("nan")] * num_classes}
    pred = predict(model, preprocess, x_u8, batch_size, tta, amp_dtype, channels_last)
    y = y.to(pred.device)
    hits = (pred == y).float()
    per_class_hits = torch.zeros(num_classes, device=pred.device).index_add_(0, y, hits)
    per_class_n = torch.bincount(y, minlength=num_classes).clamp(min=1)
    return {"accuracy": hits.mean().item(), "per_class": (per_class_hits / per_class_n).tolist()}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and/or torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def require_classes(teacher_classes: list[str], data_classes: list[str], path: str) -> None:
    if teacher_classes != data_classes:
        raise UserError(
            f"teacher {path} was trained on classes {teacher_classes[:4]}... but the data has "
            f"{data_classes[:4]}...: use a teacher trained on the same data"
        )
