"""The two containers the rest of distill codes against, plus small shared helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from distill.errors import UserError

# Bump when the decoded tensors would differ for the same files (resize rule, layout, ...):
# it is part of every cache key, so old caches are simply never read again.
# 2: 16-bit images scaled to 8 bits instead of clipped; cache files carry a checksum.
FORMAT_VERSION = 2


@dataclass
class Dataset:
    """Decoded images: uint8 (N, 3, H, W) contiguous tensors and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str  # where it came from, e.g. "cifar10-jpeg.tar.gz (image folders)"
    # The resolved absolute path that was loaded (for the default: the official set's folder used), so a
    # run can store it and load the same data again from any working directory.
    path: str = ""


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


def readable(name: str) -> str:
    """A file or folder name as text for people and files. Bytes that are not UTF-8 reach Python as lone
    surrogates (os.listdir's surrogateescape), which no JSON file, terminal or chart font takes: they are shown
    as \\xNN instead. Only for showing: the file is still opened by its own name."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def default_cache_dir() -> Path:
    """$DISTILL_CACHE when set, else ~/.cache/distill."""
    env = os.environ.get("DISTILL_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill"


def default_data_dir(cache_dir: Path | None = None) -> Path:
    """Where the official sets are downloaded, each in its own folder: $DISTILL_DATA, else <cache folder>/data."""
    env = os.environ.get("DISTILL_DATA", "").strip()
    return Path(env).expanduser() if env else (cache_dir or default_cache_dir()) / "data"


def check_classes(classes: list[str], where: str | Path) -> None:
    """A single class would "train" to 100% accuracy: refuse it before decoding anything."""
    if len(classes) < 2:
        names = ", ".join(classes) or "none"
        raise UserError(f"found {len(classes)} class{'' if len(classes) == 1 else 'es'} ({names}) in {where}: "
                        "a classifier needs at least 2")
