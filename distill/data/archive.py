"""Safe, once-only unpacking of .tar / .tar.gz / .tgz datasets into the cache.

An unpack goes into a temporary folder named after this process (files.temp_path), gets a
manifest of the archive's files, and is then renamed into place: a later run uses the folder
only when every file of the manifest is still there (load_dataset removes killed runs' temporaries).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from distill.atomic import FILE_MODE
from distill.errors import UserError

from .dataset import one_line
from .files import (
    DIR_MODE,
    WRITE_ERRNOS,
    ensure_dir,
    remove,
    temp_path,
    write_error,
)
from .progress import Reporter, show, size_text

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
MANIFEST = ".distill-unpacked.json"  # hidden: dataset scans skip it
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())  # Python >= 3.12 / recent 3.8-3.11 patches
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_key(archive: Path) -> str:
    """Identity of an archive file: its resolved path, size and mtime."""
    st = archive.stat()
    text = f"{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(os.fsencode(text)).hexdigest()[:20]  # the bytes on disk, UTF-8 or not


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


def _read_error(archive: Path, err: BaseException) -> UserError:
    return UserError(f"cannot unpack archive {archive} ({one_line(err)}); re-download it or check that it is complete")


def _stream(tar: tarfile.TarFile, archive: Path, raw: BinaryIO, advance: Callable[[int], None],
            files: dict[str, int]) -> Iterator[tarfile.TarInfo]:
    """The members in archive order as the archive is read once, each checked before extractall
    unpacks it (an unsafe one stops the unpack inside the temporary folder, which is removed)."""
    done = 0
    for member in tar:
        _check_member(member, archive)
        if member.isfile():
            files[posixpath.normpath(member.name)] = member.size
        yield member
        advance(raw.tell() - done)  # compressed bytes read so far: progress without a first pass
        done = raw.tell()
    advance(os.fstat(raw.fileno()).st_size - done)  # the end-of-archive blocks


def _extract(archive: Path, dest: Path, advance: Callable[[int], None]) -> dict[str, int]:
    """Unpack into dest in one streaming pass and return {file name: size}. An OSError from
    writing (full disk, read-only folder) propagates for the caller to name the cache folder;
    an unreadable or broken archive becomes a UserError here."""
    files: dict[str, int] = {}
    try:  # opened apart: EACCES here is about the archive, not the cache folder
        raw = open(archive, "rb")  # noqa: SIM115 (closed by the with below)
    except OSError as err:
        raise _read_error(archive, err) from None
    try:
        with raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            members = _stream(tar, archive, raw, advance, files)
            if hasattr(tarfile, "data_filter"):  # belt and braces on top of our own checks
                tar.extractall(dest, members=members, filter="data")
            else:
                tar.extractall(dest, members=members)
    except _FILTER_ERRORS as err:
        raise UserError(f"archive {archive} has an unsafe entry ({one_line(err)}); "
                        "refusing to unpack it: use a trusted copy of the dataset") from None
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise
        raise _read_error(archive, err) from None
    except _READ_ERRORS as err:
        raise _read_error(archive, err) from None
    return files


def _finish(tmp: Path, files: dict[str, int]) -> None:
    """Modes readable by every user of a shared cache, then the manifest that marks it complete."""
    for folder, _dirs, names in os.walk(tmp):
        os.chmod(folder, DIR_MODE)
        for name in names:
            path = os.path.join(folder, name)
            if stat.S_ISREG(os.lstat(path).st_mode):  # chmod would follow a symlink out of the tree
                os.chmod(path, FILE_MODE)
    (tmp / MANIFEST).write_text(json.dumps({"files": files}))
    os.chmod(tmp / MANIFEST, FILE_MODE)


def _missing(dest: Path) -> str | None:
    """None when every file the manifest lists is there with its size, else what is wrong."""
    try:
        files = json.loads((dest / MANIFEST).read_text())["files"]
        items = [(dest / name, int(size)) for name, size in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "not marked complete"
    lost = 0
    for path, size in items:
        try:
            st = path.stat()
            lost += not (stat.S_ISREG(st.st_mode) and st.st_size == size)
        except OSError:
            lost += 1
    return f"incomplete ({lost:,} of {len(items):,} files missing or changed)" if lost else None


def _unpack_into_place(archive: Path, dest: Path, report: Reporter) -> None:
    size = archive.stat().st_size
    report.say(f"loading {show(archive)}: unpacking {size_text(size)} into {show(dest)}")
    tmp = temp_path(dest)
    try:
        os.mkdir(tmp)
        with report.steps("unpacking", size, in_bytes=True) as advance:
            files = _extract(archive, tmp, advance)
        _finish(tmp, files)
        os.rename(tmp, dest)
    except OSError as err:
        if _missing(dest) is not None:  # else another process finished the same unpack first: use theirs
            raise write_error(dest.parent, err, f"unpacking {archive.name}") from None
    finally:
        remove(tmp)


def extract_archive(archive: Path, cache_dir: Path, report: Reporter | None = None) -> Path:
    """Unpack once into <cache_dir>/extracted/<key>/ and return that folder; a copy that lost
    files since (or an unpack without a manifest) is unpacked again."""
    report = report or Reporter(quiet=True)
    dest = cache_dir / "extracted" / archive_key(archive)
    ensure_dir(dest.parent, f"unpacking {archive.name}")
    if dest.is_dir():
        problem = _missing(dest)
        if problem is None:
            return dest
        report.warn(f"unpacked copy {dest} of {archive.name} is {problem}: unpacking it again")
        aside = temp_path(dest)  # renamed first, so a crash mid-delete leaves only a stale temp
        try:
            os.rename(dest, aside)
        except OSError as err:
            raise write_error(dest.parent, err, f"unpacking {archive.name} again") from None
        remove(aside)
    _unpack_into_place(archive, dest, report)
    return dest
