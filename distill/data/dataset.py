"""The two containers the rest of distill codes against, plus small shared helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.errors import UserError

# Bump when the decoded tensors would differ for the same files (resize rule, layout, ...):
# it is part of every cache key, so old caches are simply never read again.
FORMAT_VERSION = 1


@dataclass
class Dataset:
    """Decoded images: uint8 (N, 3, H, W) contiguous tensors and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str  # where it came from, e.g. "cifar10-jpeg.tar.gz (image folders)"


@dataclass
class Splits:
    """What training uses: train / validation / test tensors (val may be empty)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]


def one_line(err: BaseException) -> str:
    """An exception as one short line, for embedding in a UserError message."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def default_cache_dir() -> Path:
    """$DISTILL_CACHE when set, else ~/.cache/distill."""
    env = os.environ.get("DISTILL_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill"


def ensure_dir(path: Path) -> Path:
    """Create a cache folder, turning permission problems into a UserError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create cache folder {path} ({one_line(err)}); "
            "set $DISTILL_CACHE (or the cache dir option) to a writable folder"
        ) from None
    return path
