"""The training loop: `train_one_epoch`, `evaluate` and `fit`'s building blocks, readable top to bottom.

Data lives on the training device as uint8; each step indexes a batch out of a per-epoch
permutation, augments it on the device once, runs the teacher (if any learner distils) once on that
augmented batch, and then takes one optimizer step for every learner. A plain run is a loop with one
learner; a pipeline trains its students and baselines together, so they share the batches, the
augmentation and the teacher's forward pass. Nothing in the step waits for the host except an
occasional finiteness check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from distill.augment.ops import GpuAugment, Preprocess, mix
from distill.augment.spec import Mixing
from distill.engine.distributed import all_reduce_sum, any_rank, average_gradients
from distill.engine.ema import ModelEMA
from distill.engine.optim import Freezing
from distill.errors import UserError
from distill.methods import Batch, Method, Outputs
from distill.models import unwrap

FINITE_CHECK_EVERY = 50  # steps between host syncs that look for a non-finite loss
STOP_SYNC_EVERY = 10  # under torchrun, steps between the ranks' agreement on a stop request


class Interrupted(Exception):
    """Raised by the loop after a stop request (SIGINT/SIGTERM) once state is consistent."""


class NonFiniteLoss(UserError):
    """A user error: the recipe diverged (learning rate, precision); the message says what to change."""


@dataclass
class TeacherModel:
    model: nn.Module  # eval mode, frozen; possibly torch.compile'd
    preprocess: Preprocess


@dataclass
class Learner:
    """One model being trained: its weights, optimizer, schedule, loss and weight average."""

    name: str  # the run folder's name, for messages
    model: nn.Module  # what the step calls: possibly torch.compile'd and/or DDP-wrapped
    preprocess: Preprocess
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    method: Method
    grad_clip: float = 0.0
    ema: ModelEMA | None = None
    mix: Mixing | None = None  # its own MixUp/CutMix on top of the shared batch (--mix)
    diverged: str | None = None  # why its loss became non-finite: it takes no more steps, the others go on
    freezing: Freezing | None = None  # a fine-tuning schedule's frozen stages (distill/engine/optim.py)

    def trainable_parameters(self) -> list:
        """The student's parameters and those of modules the method owns (connectors): one optimizer for both."""
        own = self.method.modules
        return [*self.model.parameters(), *([] if own is None else own.parameters())]


@dataclass
class Loop:
    """Everything a step needs, shared by its learners; built once per run (or group of runs)."""

    learners: list[Learner]
    augment: GpuAugment
    train_x: Tensor
    train_y: Tensor
    batch_size: int
    seed: int
    epochs: int  # the run's length: a method's progress is the share of it done
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    teacher: TeacherModel | None = None
    rank: int = 0
    world_size: int = 1
    cuda_graphs: bool = False  # some model is compiled to replay CUDA graphs (compile_models sets it)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_x) // self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class Hooks:
    """What the caller of `train_one_epoch` wants to hear or say between steps."""

    stop_requested: Callable[[], bool] = lambda: False
    on_step: Callable[[int, int], None] = lambda step, steps: None


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


def forward(loop: Loop, model: nn.Module, x: Tensor):
    """One forward of a possibly compiled model. Under CUDA graphs (torch.compile's reduce-overhead) the next
    compiled call of any model may reuse this call's output memory: each call starts a new graph step, so
    what a caller reads after the next compiled call must be materialized first (`materialized`)."""
    if loop.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    return as_outputs(model(x))


def materialized(out: Outputs) -> Outputs:
    """Outputs copied out of a compiled call's buffers, safe to read after other compiled calls."""
    return Outputs(out.logits.clone(), None if out.features is None else [f.clone() for f in out.features])


def teacher_outputs(loop: Loop, x: Tensor) -> Outputs:
    """The teacher on exactly the learners' augmented batch, once for all learners that see it (its features
    too when a learner's method uses them: then its model is wrapped in WithFeatures). Materialized: every
    learner's compiled forward runs before the last learner reads them."""
    with torch.no_grad(), autocast(loop.device, loop.amp_dtype):
        return materialized(forward(loop, loop.teacher.model, model_input(x, loop.teacher.preprocess,
                                                                           loop.channels_last)))


@contextlib.contextmanager
def private_rng(seed: int, device: torch.device):
    """Draws from a stream of their own, seeded by `seed`, leaving torch's global RNG where it was."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def views(loop: Loop, x: Tensor, targets: Tensor, index: int) -> dict[Mixing | None, tuple[Tensor, Tensor]]:
    """The shared batch (key None) and, for each distinct --mix of the learners, that mix of it. A mix draws
    from a stream seeded by (seed, step, mix) alone, so a learner's batches are the same whichever group it
    trains in, and a resumed run draws them again exactly."""
    out = {None: (x, targets)}
    for spec in dict.fromkeys(learner.mix for learner in loop.learners if learner.mix is not None):
        seed = (loop.seed * 1_000_003 + index) * 1_000_033 + zlib.crc32(repr(spec).encode())
        with private_rng(seed % 2**63, loop.device):
            out[spec] = mix(x, targets, spec.mixup, spec.cutmix, spec.mix_prob)
    return out


def as_outputs(result) -> Outputs:
    """A forward's result as Outputs: logits alone, or (logits, features) from a WithFeatures model."""
    return Outputs(*result) if isinstance(result, tuple) else Outputs(result)


def learner_step(loop: Loop, learner: Learner, x: Tensor, teacher: Outputs | None,
                 batch: Batch) -> tuple[Tensor, Tensor]:
    """One optimizer step of one learner; returns its detached loss and its count of correct top-1."""
    with autocast(loop.device, loop.amp_dtype):
        out = forward(loop, learner.model, model_input(x, learner.preprocess, loop.channels_last))
    loss, _ = learner.method(out, teacher, batch)  # read before any other compiled call
    correct = (out.logits.detach().argmax(1) == batch.targets.argmax(1)).sum()
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(learner.method.modules)  # under torchrun; DDP already averaged the student's
    if learner.freezing is not None:  # before clipping: frozen gradients count for nothing
        learner.freezing.drop_gradients()
    if learner.grad_clip > 0:
        nn.utils.clip_grad_norm_(learner.trainable_parameters(), learner.grad_clip)
    learner.optimizer.step()
    learner.scheduler.step()
    if learner.ema is not None:
        learner.ema.update(unwrap(learner.model))
    return loss.detach(), correct


def train_step(loop: Loop, positions: Tensor, index: int) -> list[tuple[Tensor, Tensor]]:
    """Step `index` of the run (0-based, over all epochs) on the training images at `positions`: augment once,
    run the teacher once per batch a distilling learner sees, step every learner; (loss, correct) per learner."""
    batches = views(loop, *loop.augment(loop.train_x[positions], loop.train_y[positions]), index)
    taught = {learner.mix for learner in loop.learners
              if learner.method.needs_teacher and not learner.diverged and loop.teacher is not None}
    teacher = {key: teacher_outputs(loop, batches[key][0]) for key in batches if key in taught}
    progress = index / max(1, loop.total_steps)  # the share of the run done, for methods that ramp a weight
    idle = (torch.zeros((), device=loop.device), torch.zeros((), device=loop.device, dtype=torch.long))
    results = []
    for learner in loop.learners:
        x, targets = batches[learner.mix]
        batch = Batch(targets, progress, positions, method_stream(loop, learner, index))
        results.append(idle if learner.diverged else learner_step(loop, learner, x, teacher.get(learner.mix), batch))
    return results


def method_stream(loop: Loop, learner: Learner, index: int) -> torch.Generator | None:
    """A random stream for a method that draws (CRD's negatives), seeded by (seed, step, method) alone: the
    same draws in any group and after a resume, and torch's global stream untouched."""
    if not learner.method.draws:
        return None
    gen = torch.Generator(device=loop.device)
    gen.manual_seed((loop.seed * 1_000_003 + index) * 1_000_033 + zlib.crc32(learner.method.name.encode()))
    return gen


def rank_batch(perm: Tensor, step: int, loop: Loop) -> Tensor:
    """This rank's slice of global batch `step` (the whole batch on a single process)."""
    batch = perm[step * loop.batch_size:(step + 1) * loop.batch_size]
    return batch.chunk(loop.world_size)[loop.rank] if loop.world_size > 1 else batch


def train_one_epoch(loop: Loop, epoch: int, start_step: int = 0, hooks: Hooks | None = None) -> list[dict]:
    """Train from `start_step` to the end of the epoch (or until a stop is requested); one dict per learner."""
    hooks = hooks or Hooks()
    for learner in loop.learners:
        learner.model.train()
        if learner.freezing is not None:  # the phase follows from the epoch: a resumed run continues it
            learner.freezing.start_epoch(unwrap(learner.model), epoch)
    perm = epoch_permutation(len(loop.train_x), loop.seed, epoch, loop.device)
    steps, n = loop.steps_per_epoch, len(loop.learners)
    loss_sum = torch.zeros(n, device=loop.device)
    correct = torch.zeros(n, device=loop.device, dtype=torch.long)
    seen, step, started = 0, start_step, time.perf_counter()
    while step < steps and not stop_now(loop, step, hooks):
        idx = rank_batch(perm, step, loop)
        for i, (loss, right) in enumerate(train_step(loop, idx, epoch * steps + step)):
            loss_sum[i] += loss * len(idx)
            correct[i] += right
        seen += len(idx)
        step += 1
        if step % FINITE_CHECK_EVERY == 0 and step < steps:  # the last step is checked below
            check_finite(loop, all_reduce_sum(loss_sum.clone()), epoch, step)
        hooks.on_step(step, steps)
    all_reduce_sum(loss_sum)  # every rank reports the global epoch figures (no-op on one process)
    all_reduce_sum(correct)
    # Also when stopping early: the caller saves last.pt next, and must never save diverged weights.
    check_finite(loop, loss_sum, epoch, step)
    seconds = time.perf_counter() - started  # after check_finite's sync: queued GPU work is counted
    done = max(seen * loop.world_size, 1)
    return [{"loss": loss_sum[i].item() / done, "accuracy": correct[i].item() / done,
             "images": seen * loop.world_size, "seconds": seconds, "next_step": step, "finished": step >= steps}
            for i in range(n)]


def stop_now(loop: Loop, step: int, hooks: Hooks) -> bool:
    """Alone, stop at the next step. Under torchrun every rank must stop at the same step (DDP's next
    gradient all-reduce would wait forever for a rank that stopped), so they agree every few steps."""
    if loop.world_size == 1:
        return hooks.stop_requested()
    return step % STOP_SYNC_EVERY == 0 and any_rank(hooks.stop_requested(), loop.device)


def check_finite(loop: Loop, loss_sums: Tensor, epoch: int, step: int) -> None:
    """`loss_sums` (one per learner) summed over ranks, so that every rank decides alike. A learner whose loss
    became non-finite stops (its checkpoints already written are kept) and the others go on; when none is
    left, training stops here."""
    for learner, value in zip(loop.learners, loss_sums.tolist()):
        if learner.diverged is None and not math.isfinite(value):
            learner.diverged = (f"the training loss of {learner.name} became non-finite in epoch {epoch + 1} by step "
                                f"{step}: {divergence_advice(loop, learner)}")
    if all(learner.diverged for learner in loop.learners):
        raise NonFiniteLoss(diverged_message(loop.learners))


def divergence_advice(loop: Loop, learner: Learner) -> str:
    """The likely causes, most specific first: a method weight raised far from its default, then the recipe."""
    method = learner.method
    raised = [f"--{f.name.replace('_', '-')} {getattr(method.options, f.name):g} (default {f.default:g})"
              for f in dataclasses.fields(method.Options)
              if isinstance(f.default, float) and getattr(method.options, f.name) > 10 * max(f.default, 1e-12)]
    advice = [f"bring {', '.join(raised)} back toward the default"] if raised else []
    advice.append("lower --lr")
    if learner.grad_clip == 0:
        advice.append("set --grad-clip")
    if loop.amp_dtype is not None:
        advice.append("use --precision fp32")
    return ", or ".join(advice)


def diverged_message(learners: list[Learner]) -> str:
    gone = [learner.diverged for learner in learners if learner.diverged]
    return "; ".join(gone) + ("; checkpoints already written are kept: start that run over with the fix (--force, or "
                              "delete its folder in a pipeline)")


