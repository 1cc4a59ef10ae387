"""torchrun support: one process per GPU (or CPU process with gloo), DistributedDataParallel.

Without torchrun's environment (WORLD_SIZE unset or 1) every function here is a no-op, so the
single-process path stays the plain one.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes; returns (rank, world size, this rank's device)."""
    if world_size() <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    if not dist.is_initialized():
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
