"""Safe, once-only unpacking of .tar / .tar.gz / .tgz datasets into the cache."""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path

from distill.errors import UserError

from .dataset import ensure_dir, one_line

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())  # Python >= 3.12 / recent 3.8-3.11 patches


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_key(archive: Path) -> str:
    """Identity of an archive file: its resolved path, size and mtime."""
    st = archive.stat()
    text = f"{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _escapes(name: str) -> bool:
    """True for an absolute path or one with a '..' component (also with Windows separators)."""
    norm = name.replace("\\", "/")
    return norm.startswith("/") or ".." in norm.split("/")


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    why = None
    if _escapes(member.name):
        why = "an absolute path or a '..' component"
    elif member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), member.linkname))
        if member.linkname.startswith("/") or _escapes(target):
            why = f"a symlink to {member.linkname!r}, outside the archive"
    elif member.islnk() and _escapes(member.linkname):
        why = f"a hard link to {member.linkname!r}, outside the archive"
    elif member.ischr() or member.isblk() or member.isfifo():
        why = "a device or fifo"
    if why:
        raise UserError(f"archive {archive} has an unsafe entry {member.name!r} ({why}); "
                        "refusing to unpack it: use a trusted copy of the dataset")


def _unpack(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            if hasattr(tarfile, "data_filter"):  # belt and braces on top of our own checks
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except _FILTER_ERRORS as err:
        raise UserError(f"archive {archive} has an unsafe entry ({one_line(err)}); "
                        "refusing to unpack it: use a trusted copy of the dataset") from None
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"cannot unpack archive {archive} ({one_line(err)}); "
                        "re-download it or check that the cache folder has free space") from None


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack once into <cache_dir>/extracted/<key>/ and return that folder.

    Unpacking goes to a temp folder beside it that is renamed at the end, so an interrupted
    run never leaves a half-filled folder that a later run would take as complete.
    """
    dest = cache_dir / "extracted" / archive_key(archive)
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=ensure_dir(dest.parent)))
    try:
        _unpack(archive, tmp)
        os.rename(tmp, dest)
    except OSError as err:
        if not dest.is_dir():  # else another process finished the same unpack first: use theirs
            raise UserError(f"cannot move the unpacked {archive.name} to {dest} ({one_line(err)}); "
                            "check the cache folder's permissions") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
