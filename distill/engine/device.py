"""Where and how a run computes: the device, mixed precision, cuDNN and TF32 settings, and torch.compile
(which models, which mode, where inductor keeps its kernels)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from distill.data import default_cache_dir
from distill.engine.checks import needs_teacher
from distill.engine.loop import Loop
from distill.errors import UserError
from distill.front import config as C


# --compile's automatic choice: on for single-GPU runs of at least this many steps. Measured on an H100
# (2026-11-27): CUDA graphs (reduce-overhead) take a ResNet50 step from 12.6k to 17.1k images/s (10.7 ms
# saved per batch of 512) after ~50 s of cold compile: repaid after ~4,700 steps cold, far sooner with the
# persistent cache a second run reads. Students' compile gain is not measured yet (BENCHMARKS.md).
AUTO_COMPILE_MIN_STEPS = 2500


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that capture CUDA graphs


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


def configure_backends(cfg: C.TrainConfig, device: torch.device) -> None:
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def use_persistent_compile_cache(cfg: C.TrainConfig) -> None:
    """Inductor's compiled kernels under the user cache folder instead of /tmp: a second run (or the next
    stage of a pipeline) reads them back instead of compiling again. Importing torchvision already fills
    TORCHINDUCTOR_CACHE_DIR with inductor's /tmp default, which inductor re-reads at every use, so that
    default is replaced; a folder the user chose is kept."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as inductor_default

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(inductor_default()):
        root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((root / "inductor").absolute())


def compile_wanted(cfg: C.TrainConfig, loop: Loop) -> bool:
    """--compile / --no-compile as given; unset, on for long single-process GPU runs (AUTO_COMPILE_MIN_STEPS)."""
    if cfg.compile is not None:
        return cfg.compile
    steps = cfg.epochs * loop.steps_per_epoch
    return loop.device.type == "cuda" and loop.world_size == 1 and steps >= AUTO_COMPILE_MIN_STEPS


def compile_models(loop: Loop, cfgs: list[C.TrainConfig]) -> None:
    """torch.compile what the configs ask for, after the optimizers, EMAs and restore: they, the checkpoints
    and evaluation hold the plain modules (`unwrap`), so compiling changes no saved key and evaluation's
    odd last batch causes no recompile."""
    wanted = [compile_wanted(cfg, loop) for cfg in cfgs]
    # --compile-teacher unset follows the student: the teacher's forward is half of a distillation step.
    compile_teacher = loop.teacher is not None and any(
        w if cfg.compile_teacher is None else cfg.compile_teacher for cfg, w in zip(cfgs, wanted) if needs_teacher(cfg))
    if any(wanted) or compile_teacher:
        use_persistent_compile_cache(cfgs[0])
    mode = cfgs[0].compile_mode  # shared by the group
    for learner, want in zip(loop.learners, wanted):
        if want:
            learner.model = torch.compile(learner.model, mode=mode)
    if compile_teacher:
        # The teacher always sees full training batches (every step has batch_size images): one shape,
        # so one compile, and under reduce-overhead one CUDA graph replayed every step.
        loop.teacher.model = torch.compile(loop.teacher.model, mode=mode)
    # These modes replay CUDA graphs, whose outputs the next compiled call overwrites (train.forward).
    loop.cuda_graphs = (any(wanted) or compile_teacher) and mode in CUDA_GRAPH_MODES


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
