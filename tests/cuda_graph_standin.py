"""A CPU stand-in for torch.compile(mode="reduce-overhead"): CUDA-graph output semantics without a GPU.

Under CUDA-graph trees a compiled call's outputs live in the graph's memory pool, and the next compiled call
(of any model, once no backward is pending) may overwrite them; reading one afterwards raises "accessing
tensor output of CUDAGraphs that has been overwritten by a subsequent run". Here every call of any model
wrapped with the same `GraphPool` starts a new generation, which is stricter than the real rule: outputs
(and views of them) of an older generation raise on their next use in any torch function. Values are
untouched, so code that reads nothing stale gives exactly the unwrapped result.
"""

from __future__ import annotations

import torch
from torch import nn

STALE = "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"


class GraphPool:
    def __init__(self):
        self.generation = 0
        self.calls = 0


class GraphOutput(torch.Tensor):
    """A tensor that remembers which generation of its pool produced it."""

    pool: GraphPool
    generation: int

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        guarded = [t for t in _tensors((args, kwargs)) if isinstance(t, GraphOutput)]
        for t in guarded:
            if t.generation != t.pool.generation:
                raise RuntimeError(f"{STALE} (output of generation {t.generation}, now {t.pool.generation})")
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
            # A view of an output shares its memory, so it goes stale with it; anything else is a new tensor.
            pointers = {p: t for t in guarded if (p := _pointer(t)) is not None}
            sources = _map(result, lambda r: pointers.get(_pointer(r)))
        return _zip_map(result, sources, lambda r, source: r if source is None else _tag(r, source.pool,
                                                                                           source.generation))


def _pointer(t: torch.Tensor) -> int | None:
    """Where t's memory starts (None without storage); called with torch functions of subclasses disabled."""
    try:
        return t.untyped_storage().data_ptr() or None
    except (RuntimeError, NotImplementedError):
        return None


def _tag(t: torch.Tensor, pool: GraphPool, generation: int) -> GraphOutput:
    with torch._C.DisableTorchFunctionSubclass():
        out = t.as_subclass(GraphOutput)  # same memory, still attached to the autograd graph
    out.pool, out.generation = pool, generation
    return out


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


def _map(tree, fn):
    """fn applied to every tensor of a (nested) list or tuple; anything else is returned as it is (None for
    sources)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(_map(item, fn) for item in tree)
    return tree


def _zip_map(tree, sources, fn):
    if isinstance(tree, torch.Tensor):
        return fn(tree, sources)
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(_zip_map(item, source, fn) for item, source in zip(tree, sources))
    return tree


class CudaGraphStandIn(nn.Module):
    """`module` behind CUDA-graph output semantics; `.module` lets distill's unwrap() see through it."""

    def __init__(self, module: nn.Module, pool: GraphPool):
        super().__init__()
        self.module = module
        self.pool = pool

    def forward(self, *args, **kwargs):
        self.pool.generation += 1  # every earlier output of the pool is now overwritten
        self.pool.calls += 1
        out = self.module(*args, **kwargs)
        return _map(out, lambda t: _tag(t, self.pool, self.pool.generation))


def standin_compile(pool: GraphPool):
    """A replacement for torch.compile(model, mode=...) that wraps the model in the stand-in."""

    def compile(model: nn.Module, mode: str | None = None, **_):
        return CudaGraphStandIn(model, pool)

    return compile
