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
        model = convert_sync_bn(model, device)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def share_method_modules(modules: nn.Module | None, device: torch.device, sync_bn: bool) -> nn.Module | None:
    """A method's own modules (connectors, embedding heads) live outside the student's DDP wrapper: they start
    from rank 0's weights, their gradients are averaged after each backward (`average_gradients`), and their
    BatchNorm follows --sync-bn as the student's does. Without this every process trains its own copy."""
    if modules is None or not dist.is_initialized():
        return modules
    for tensor in [*modules.parameters(), *modules.buffers()]:
        dist.broadcast(tensor.data, src=0)
    return convert_sync_bn(modules, device) if sync_bn else modules


def average_gradients(modules: nn.Module | None) -> None:
    """The mean over processes of `modules`' gradients, in one all-reduce (what DDP does for the student)."""
    if modules is None or not dist.is_initialized():
        return
    grads = [p.grad for p in modules.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(mean.view_as(g))


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm: torch's SyncBatchNorm on GPUs, GlooSyncBatchNorm for CPU processes."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            # Same parameters and buffers, new forward: the optimizer and the EMA keep their references.
            module.__class__ = GlooSyncBatchNorm
    return model


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every process's shard, for CPU (gloo) processes.

    nn.SyncBatchNorm refuses CPU tensors. This computes the global mean and biased variance with
    differentiable all-reduces (two passes, for the same accuracy as one big batch), so gradients
    also flow across ranks exactly as through a single process's BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        count = all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype))
        mean = AllReduceSum.apply(x.sum(dims)) / count
        var = AllReduceSum.apply((x - mean.view(shape)).square().sum(dims)) / count
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), count)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * count / (count - 1).clamp(min=1)  # what BatchNorm keeps as running_var
        self.running_mean.mul_(1 - m).add_(mean * m)
        self.running_var.mul_(1 - m).add_(unbiased * m)


class AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is again the sum over ranks: every rank's loss reaches every input.
    (torch.distributed.nn.functional.all_reduce does the same but is deprecated.)"""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t.clone())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(grad.clone())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process as soon as `flag` is True on one of them (just `flag` on a single process).

    Used where ranks must take the same branch, e.g. stopping: a rank that stopped alone would leave
    the others waiting forever in their next all-reduce."""
    if not dist.is_initialized():
        return flag
    return all_reduce_sum(torch.tensor(float(flag), device=device)).item() > 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every process's `t` (same shape on each), concatenated along dim 0 in rank order; `t` itself alone."""
    if not dist.is_initialized():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def own_rows(t: torch.Tensor) -> torch.Tensor:
    """This process's rows of a tensor over the global batch in `all_gather_cat`'s order (`t` itself alone)."""
    if not dist.is_initialized():
        return t
    return t.chunk(dist.get_world_size())[dist.get_rank()]


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
