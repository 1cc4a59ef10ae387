"""Seeded, class-balanced splits and subsets, and channel statistics; all vectorised."""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from distill.errors import UserError

from .dataset import Dataset, Splits


def _generator(seed: int, stream: str) -> torch.Generator:
    # One independent stream per purpose, so e.g. changing val_size leaves limit_test's pick alone.
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _quotas(counts: torch.Tensor, n: int) -> torch.Tensor:
    """n split as evenly as counts allow: n//C each, the remainder to the first classes, and
    what a short class cannot take spread over the others (a loop over classes, not samples)."""
    quota = torch.zeros_like(counts)
    remaining = n
    while remaining > 0:
        open_ = (counts - quota > 0).nonzero().squeeze(1)
        add = torch.full((len(open_),), remaining // len(open_), dtype=counts.dtype)
        add[: remaining % len(open_)] += 1
        add = torch.minimum(add, counts[open_] - quota[open_])
        quota[open_] += add
        remaining -= int(add.sum())
    return quota


def _balanced_indices(y: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Sorted indices of n samples, class-balanced, random within each class."""
    counts = torch.bincount(y)
    quota = _quotas(counts, n)
    perm = torch.randperm(len(y), generator=gen)
    grouped = perm[torch.argsort(y[perm], stable=True)]  # by class, random order inside
    labels = y[grouped]
    rank = torch.arange(len(y)) - (torch.cumsum(counts, 0) - counts)[labels]
    return grouped[rank < quota[labels]].sort().values


def _check_limit(n: int, available: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"limit {n!r} is not a positive integer; pass a count of images, or no limit")
    if n > available:
        raise UserError(f"limit {n} is larger than the {available} images available; lower it")


def _subset(x: torch.Tensor, y: torch.Tensor, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    _check_limit(n, len(y))
    if n == len(y):
        return x, y
    idx = _balanced_indices(y, n, gen)
    return x[idx], y[idx]


def balanced_subset(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images, n//C per class with the remainder over the first classes, chosen by seed."""
    return _subset(x, y, n, _generator(seed, "subset"))


def class_position(classes: list[str], item: int | str) -> int:
    """Where a --classes item (a position, or a name) is in the data's class list."""
    if isinstance(item, str) and item in classes:
        return classes.index(item)
    if isinstance(item, int) and item < len(classes):
        return item
    shown = ", ".join(f"{i} {name}" for i, name in enumerate(classes[:12])) + (", ..." if len(classes) > 12 else "")
    what = f"position {item} is past the last" if isinstance(item, int) else f"'{item}' is not one"
    raise UserError(f"--classes: {what} of the data's {len(classes)} classes ({shown}): choose among them")


def select_classes(ds: Dataset, wanted: list[int | str] | None) -> Dataset:
    """The images of the chosen classes (positions in ds.classes, or names), relabelled 0..k-1 in the data's class
    order; the same Dataset when every class is wanted. The decoded cache holds every class: a subset costs one
    selection, not a decode."""
    if wanted is None:
        return ds
    chosen = sorted({class_position(ds.classes, item) for item in wanted})
    if len(chosen) < len(wanted):
        raise UserError("--classes names one class twice (by its position and its name): name each once")
    relabel = torch.full((len(ds.classes),), -1, dtype=torch.int64)
    relabel[chosen] = torch.arange(len(chosen))
    keep_train, keep_test = relabel[ds.train_y] >= 0, relabel[ds.test_y] >= 0
    return dataclasses.replace(ds, train_x=ds.train_x[keep_train], train_y=relabel[ds.train_y[keep_train]],
                               test_x=ds.test_x[keep_test], test_y=relabel[ds.test_y[keep_test]],
                               classes=[ds.classes[i] for i in chosen])


def make_splits(ds: Dataset, val_size: int, limit_train: int | None, limit_test: int | None,
                seed: int, classes: list[int | str] | None = None) -> Splits:
    """Keep the chosen classes (all by default), hold out a class-balanced validation set, then optionally
    subsample train and test."""
    ds = select_classes(ds, classes)
    n = len(ds.train_y)
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 <= val_size < n:
        raise UserError(f"validation size {val_size!r} must be from 0 to {n - 1} "
                        f"(the training set has {n} images); lower it")
    train_x, train_y = ds.train_x, ds.train_y
    val_idx = _balanced_indices(train_y, val_size, _generator(seed, "val"))
    if val_size:
        keep = torch.ones(n, dtype=torch.bool)
        keep[val_idx] = False
        train_x, train_y = train_x[keep], train_y[keep]
    if limit_train is not None:
        train_x, train_y = _subset(train_x, train_y, limit_train, _generator(seed, "train"))
    test_x, test_y = ds.test_x, ds.test_y
    if limit_test is not None:
        test_x, test_y = _subset(test_x, test_y, limit_test, _generator(seed, "test"))
    return Splits(train_x, train_y, ds.train_x[val_idx], ds.train_y[val_idx], test_x, test_y, list(ds.classes))


def channel_stats(x_uint8: torch.Tensor, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std in 0..1 units, accumulated in float64 a chunk
    at a time, so CIFAR-10 never needs a 600 MB float copy."""
    if x_uint8.dtype != torch.uint8 or x_uint8.ndim != 4 or len(x_uint8) == 0:
        raise ValueError(f"expected a non-empty uint8 (N, C, H, W) tensor, got {x_uint8.dtype} {tuple(x_uint8.shape)}")
    total = torch.zeros(x_uint8.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x_uint8), chunk):
        part = x_uint8[start : start + chunk].to(torch.float64)
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = x_uint8.numel() / x_uint8.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return (mean / 255).tolist(), (std / 255).tolist()
