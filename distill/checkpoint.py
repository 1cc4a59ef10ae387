"""Checkpoints: written atomically, read with weights_only=True, refused with one clear line when broken.

A distill checkpoint is a plain dict of tensors, numbers, strings and lists, so a weights-only
`torch.load` reads it and nothing in it can run code.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from distill.errors import UserError

FORMAT = "distill-checkpoint"
VERSION = 1
TEMP_SUFFIX = ".tmp"  # write_atomic's temporary files: .<name>.<random>.tmp beside the target


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
    """torch.save `obj` to `path` atomically (see write_atomic)."""

    def write(fh: BinaryIO) -> None:
        try:
            torch.save(obj, fh)
        except RuntimeError:  # torch's zip writer turns a failed write (a full disk) into this
            raise OSError(errno.EIO, "the write failed; is the disk full?") from None

    write_atomic(path, write)


def write_text_atomic(text: str, path: Path) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode()))


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash at any moment leaves either the old complete file or the new one, never a torn file; a
    failure (disk full, unwritable folder) is one UserError and leaves no temporary file behind.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary shareable file
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"could not write {path} ({exc.strerror or exc}): free disk space or choose another "
                            f"--out; the previous {path.name}, if any, is untouched") from None
        raise
    fsync_dir(path.parent)


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files of writes that were killed before their rename (never a complete file)."""
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def read_torch_file(path: Path) -> object:
    """torch.load with weights_only=True, turning every failure into one line that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: check the path")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (an interrupted copy?): use another file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's advice on odd pickles would add lines to our one
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # The safe unpickler names what it refused; "Unsupported operand" means bytes that are no pickle.
        if "Weights only load failed" in text and "Unsupported operand" not in text:
            found = re.search(r"GLOBAL (\S+) was not", text)
            what = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"refused to load {path}: it holds pickled Python objects{what}, not only tensors, and loading it "
                f"could run code; use a checkpoint written by distill or a plain state_dict"
            ) from None
        raise UserError(f"{path} is not a PyTorch checkpoint (unreadable pickle): use another file") from None
    except Exception as exc:  # a torn zip or random bytes fail in many ways (even KeyError); all mean one thing
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
