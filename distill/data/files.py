"""Cache-folder plumbing: atomic writes, temporaries left by killed runs, one-line write errors."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import BinaryIO, Callable

from distill.atomic import write_atomic
from distill.errors import UserError

from .dataset import one_line

DIR_MODE = 0o755  # a cache shared between users must be readable by all of them (files: distill.atomic)
# A temporary whose owner cannot be checked (another machine sharing the cache, or a name from an
# older distill) is only removed after this long: no unpack or decode takes a day.
STALE_AGE_S = 24 * 3600
_HOST = (socket.gethostname() or "localhost").replace("~", "-")
_FULL = {errno.ENOSPC, errno.EDQUOT}
WRITE_ERRNOS = _FULL | {errno.EACCES, errno.EPERM, errno.EROFS}


def write_error(folder: Path, err: OSError, what: str) -> UserError:
    """The one-line error for a failed write into a cache folder, with what to do about it."""
    if err.errno in _FULL:
        return UserError(f"no space left in {folder} while {what} ({one_line(err)}); free disk space there, "
                         "or set $DISTILL_CACHE / --cache-dir to a folder on a disk with room")
    return UserError(f"cannot write to {folder} while {what} ({one_line(err)}); "
                     "set $DISTILL_CACHE / --cache-dir to a writable folder")


def ensure_dir(path: Path, what: str = "creating the cache folder") -> Path:
    """Create a cache folder, turning permission or space problems into a UserError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_error(path, err, what) from None
    return path


def temp_path(final: Path) -> Path:
    """A hidden temporary beside `final`, named after this machine and process so that
    clean_stale can tell a killed run's leftovers from a live run's work in progress."""
    return final.with_name(f".{final.name}~{_HOST}~{os.getpid()}~{secrets.token_hex(4)}.tmp")


def _owner(name: str) -> tuple[str, int] | None:
    parts = name[: -len(".tmp")].rsplit("~", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _stale(entry: os.DirEntry, now: float) -> bool:
    owner = _owner(entry.name)
    if owner is not None and owner[0] == _HOST:
        return not _alive(owner[1])
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > STALE_AGE_S
    except OSError:
        return False


def remove(path: Path) -> None:
    """Delete a file or folder tree if it is there; never raises (best-effort cleanup)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def clean_stale(folder: Path) -> None:
    """Remove temporaries (.*.tmp) left in `folder` by runs that were killed midway. A temporary
    of a live process on this machine is left alone, so concurrent runs are safe."""
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if _stale(entry, now):
            remove(Path(entry.path))


def atomic_write(final: Path, write: Callable[[BinaryIO], None], what: str) -> None:
    """distill.atomic's write, with a temporary named for clean_stale and the cache's one-line errors."""
    folder = ensure_dir(final.parent, what)
    write_atomic(final, write, lambda err: write_error(folder, err, what), temp=temp_path(final))


def special_kind(mode: int) -> str | None:
    """None for a regular file or folder, else what it is (reading a FIFO would block forever)."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "a special file"


def require_regular(path: str | Path, st: os.stat_result) -> None:
    """Refuse anything that is not a regular file or folder, naming it."""
    kind = special_kind(st.st_mode)
    if kind:
        raise UserError(f"{path} is {kind}, not a regular file; remove it from the data set "
                        "(or point --data at the real data)")
