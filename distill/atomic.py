"""Atomic writes, the one way distill writes a file that matters (checkpoints, metrics, caches, exports).

Write to a hidden temporary beside the target, fsync, set mode 0644, then os.replace: a crash at any
moment leaves the old complete file or the new one, never a torn file, and a failure leaves no temporary
behind. Callers say how a failed write reads to the user (`on_error`); torch-free.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

from distill.errors import UserError

TEMP_SUFFIX = ".tmp"  # temporaries are .<name>.<...>.tmp beside the target
FILE_MODE = 0o644  # an ordinary, shareable file (a shared cache must be readable by every user)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not allow opening a folder; the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], object], on_error: Callable[[OSError], UserError],
                 temp: Path | None = None) -> None:
    """`write(file)` into a temporary (`temp`, else a random hidden name) and rename it over `path`; an
    OSError becomes `on_error(err)`, one line for the user."""
    path = Path(path)
    tmp = temp or path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise on_error(exc) from None
        raise
    fsync_dir(path.parent)


def torch_writer(obj: object) -> Callable[[BinaryIO], None]:
    """torch.save into an open file, a failed write (a full disk) an OSError like any other: torch's zip
    writer turns it into a RuntimeError."""

    def write(fh: BinaryIO) -> None:
        import torch  # only where a tensor file is written: the rest of this module is torch-free

        try:
            torch.save(obj, fh)
        except RuntimeError:
            raise OSError(errno.EIO, "the write failed; is the disk full?") from None

    return write
