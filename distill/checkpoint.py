"""Checkpoints: written atomically, read with weights_only=True, refused with one clear line when broken.

A distill checkpoint is a plain dict of tensors, numbers, strings and lists, so `torch.load(...,
weights_only=True)` reads it and nothing in it can run code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from distill.errors import UserError

FORMAT = "distill-checkpoint"
VERSION = 1


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not allow opening a folder; the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(obj: object, path: Path) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash at any moment leaves either the old complete file or the new one, never a torn file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary shareable file
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(
            f"could not write {path} ({exc.strerror or exc}): free disk space or choose another --out; "
            f"the previous checkpoint is untouched"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_torch_file(path: Path) -> object:
    """torch.load with weights_only=True, turning every failure into one line that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: check the path")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (an interrupted copy?): use another file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise UserError(
                f"refused to load {path}: it holds pickled Python objects, not only tensors, and loading it "
                f"could run code; use a checkpoint written by distill or a plain state_dict"
            ) from None
        raise UserError(f"{path} is not a PyTorch checkpoint (unreadable pickle): use another file") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise UserError(
            f"{path} is truncated or corrupt ({first_line(exc)}): use another copy, e.g. best.pt or last.pt"
        ) from None


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:120] if lines else type(exc).__name__


def load_checkpoint(path: Path) -> dict:
    """Read a distill checkpoint, refusing foreign files (e.g. a plain torchvision state_dict)."""
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = " (it looks like a plain state_dict; use it with --weights FILE)" if looks_like_state_dict(ckpt) else ""
        raise UserError(f"{path} is not a distill checkpoint{hint}: pass last.pt or best.pt from a distill run")
    if ckpt.get("version", 0) > VERSION:
        raise UserError(f"{path} was written by a newer distill (format {ckpt['version']}): upgrade distill")
    missing = [k for k in ("spec", "model", "classes", "normalization", "config") if k not in ckpt]
    if missing:
        raise UserError(f"{path} is an incomplete distill checkpoint (missing {', '.join(missing)}): use another file")
    return ckpt


def looks_like_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def eval_state_dict(ckpt: dict) -> dict:
    """The weights that were evaluated (EMA or raw, whichever won on validation)."""
    return ckpt["ema"] if ckpt.get("eval_weights") == "ema" and ckpt.get("ema") is not None else ckpt["model"]
