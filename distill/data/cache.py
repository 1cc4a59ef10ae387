"""Decoded tensors cached as one torch file per (data, image size, format version)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable

import torch

from distill.errors import UserError

from .dataset import FORMAT_VERSION, Dataset, ensure_dir, one_line

_TENSORS = ("train_x", "train_y", "test_x", "test_y")


def cache_key(root: Path, image_size: int, files: Iterable[tuple[str, int, int]]) -> str:
    """Hash of the source and every file's (relative path, size, mtime_ns): any edit changes it."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}\0{root.resolve()}\0{image_size}\n".encode())
    for rel, size, mtime_ns in files:
        h.update(f"{rel}\0{size}\0{mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "tensors" / f"{key}.pt"


def _valid(obj: object, image_size: int) -> bool:
    if not isinstance(obj, dict) or any(not isinstance(obj.get(k), torch.Tensor) for k in _TENSORS):
        return False
    xs, ys = (obj["train_x"], obj["test_x"]), (obj["train_y"], obj["test_y"])
    return (all(x.dtype == torch.uint8 and x.shape[1:] == (3, image_size, image_size) for x in xs)
            and all(y.dtype == torch.int64 and y.ndim == 1 for y in ys)
            and all(len(x) == len(y) for x, y in zip(xs, ys))
            and isinstance(obj.get("classes"), list) and isinstance(obj.get("source"), str))


def read_cache(path: Path, image_size: int) -> Dataset | None:
    """The cached Dataset, or None when absent or unreadable (then it is simply rebuilt)."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated by a full disk, written by another version, ...
        return None
    if not _valid(obj, image_size):
        return None
    return Dataset(*(obj[k].contiguous() for k in _TENSORS), classes=list(obj["classes"]), source=obj["source"])


def write_cache(path: Path, ds: Dataset) -> None:
    """Atomically write: a temp file in the same folder, then os.replace."""
    ensure_dir(path.parent)
    payload = {k: getattr(ds, k).contiguous() for k in _TENSORS}
    payload.update(classes=list(ds.classes), source=ds.source)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except OSError as err:
        raise UserError(f"cannot write cache file {path} ({one_line(err)}); free disk space "
                        "or set $DISTILL_CACHE to a writable folder") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
