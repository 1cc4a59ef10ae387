"""load_dataset: any accepted path (or a download) -> a cached, decoded Dataset."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from distill.errors import UserError

from . import decode
from .archive import extract_archive, is_archive
from .cache import cache_key, cache_path, read_cache, write_cache
from .cifar import CIFAR_FILES, cifar_files, read_cifar
from .dataset import (
    Dataset,
    check_classes,
    default_cache_dir,
    default_data_dir,
    one_line,
    readable,
)
from .files import clean_stale, require_regular
from .folders import is_dir, list_visible, scan_tree
from .progress import Reporter, show

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
LAYOUTS = ("train/<class>/ and test/<class>/ image folders, CIFAR-10 python batches "
           f"({CIFAR_DIR}/ or {CIFAR_ARCHIVE}), or a .tar/.tar.gz/.tgz of either")
KIND_TEXT = {"cifar": "CIFAR-10 python batches", "folders": "image folders"}
Files = list[tuple[str, int, int]]  # (relative path, size, mtime_ns) of every source file
NOT_DOWNLOADED = (f"CIFAR-10 is not downloaded and the download failed ({{why}}): pass --data PATH or set "
                  f"$DISTILL_DATA to any of: {LAYOUTS}")
DOWNLOAD_LEAVES = (CIFAR_DIR, CIFAR_ARCHIVE)  # what a torchvision download (finished or cut short) leaves behind


@dataclass
class _Job:
    """What every step of one load_dataset call needs."""

    image_size: int
    cache_dir: Path
    report: Reporter

    @property
    def at(self) -> str:
        return f"{self.image_size}x{self.image_size}"


def _is_cifar_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in CIFAR_FILES)


def _is_tree(path: Path) -> bool:
    return (path / "train").is_dir() or (path / "test").is_dir()


def find_layout(path: Path, depth: int = 1) -> tuple[str, Path] | None:
    """("cifar" | "folders", root) for a folder in either layout, or holding exactly one
    subfolder that is (archives usually wrap everything in one top folder)."""
    if _is_cifar_dir(path):
        return "cifar", path
    if _is_tree(path):
        if not ((path / "train").is_dir() and (path / "test").is_dir()):
            raise UserError(f"{path} needs both train/ and test/ folders (one is missing); add it")
        return "folders", path
    if (path / CIFAR_DIR).is_dir():
        return "cifar", path / CIFAR_DIR
    subdirs = [Path(e.path) for e in list_visible(path) if is_dir(e)]
    if depth > 0 and len(subdirs) == 1:
        return find_layout(subdirs[0], depth - 1)
    return None


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _plan(kind: str, root: Path, job: _Job, source: str, where: Path) -> tuple[Files, Callable[[], Dataset]]:
    """The files that key the cache, and how to decode them (scanning a tree only once)."""
    say = job.report.say
    if kind == "cifar":
        files = [(p.name, *_stat(p)) for p in cifar_files(root)]

        def build() -> Dataset:
            say(f"loading {show(where)}: reading CIFAR-10 python batches at {job.at} (cached for next time)")
            train_x, train_y, test_x, test_y, classes = read_cifar(root)
            check_classes(classes, where)
            with job.report.steps("resizing", len(train_x) + len(test_x)) as advance:
                train_x, test_x = (decode.resize_images(x, job.image_size, advance) for x in (train_x, test_x))
            return Dataset(train_x, train_y, test_x, test_y, classes, source)

        return files, build
    train, test = scan_tree(root)
    check_classes(train.classes, where)

    def build() -> Dataset:
        n = len(train.files) + len(test.files)
        say(f"loading {show(where)}: decoding {n:,} images at {job.at} (cached for next time)")
        with job.report.steps("decoding", n) as advance:
            x_tr, x_te = (decode.decode_images([f.path for f in s.files], job.image_size, advance)
                          for s in (train, test))
        y_tr, y_te = (torch.tensor(s.labels, dtype=torch.int64) for s in (train, test))
        return Dataset(x_tr, y_tr, x_te, y_te, train.classes, source)

    return [(f.rel, f.size, f.mtime_ns) for f in train.files + test.files], build


def _cached(key: str, n_files: int, job: _Job, where: Path, build: Callable[[], Dataset]) -> Dataset:
    """Read <cache_dir>/tensors/<key>.pt, or build the Dataset and write it there."""
    path = cache_path(job.cache_dir, key)
    start = time.perf_counter()
    ds = read_cache(path, job.image_size, n_files, job.report.warn)
    if ds is not None:
        n = len(ds.train_y) + len(ds.test_y)
        job.report.say(f"loading {show(where)}: using the cached decode of {n:,} images at {job.at} "
                       f"({time.perf_counter() - start:.1f} s)")
        return ds
    ds = build()
    write_cache(path, ds, n_files)
    return ds


def _load_archive(archive: Path, job: _Job) -> Dataset:
    # Keyed on the archive file alone, so a cache hit needs neither unpacking nor a scan.
    key = cache_key(archive, job.image_size, [(archive.name, *_stat(archive))])

    def build() -> Dataset:
        layout = find_layout(extract_archive(archive, job.cache_dir, job.report))
        if layout is None:
            raise UserError(f"archive {archive} holds no dataset; expected {LAYOUTS}")
        return _plan(*layout, job, f"{readable(archive.name)} ({KIND_TEXT[layout[0]]})", archive)[1]()

    return _cached(key, 1, job, archive, build)


def _load_folder(kind: str, root: Path, job: _Job, where: Path) -> Dataset:
    files, build = _plan(kind, root, job, f"{readable(root.name or str(root))} ({KIND_TEXT[kind]})", where)
    return _cached(cache_key(root, job.image_size, files), len(files), job, where, build)


def _complete_cifar(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CIFAR_FILES)


def _listing(names: list[str], most: int = 4) -> str:
    shown = ", ".join(readable(n) for n in names[:most])
    return shown + (f" and {len(names) - most:,} more" if len(names) > most else "")


def _other_contents(root: Path) -> list[str]:
    """What root holds besides a CIFAR-10 download: a file (or a broken link) is itself, a missing folder nothing."""
    if not root.is_dir():
        return [root.name] if root.exists() or root.is_symlink() else []
    return [e.name for e in list_visible(root) if e.name not in DOWNLOAD_LEAVES]


def _download(root: Path, report: Reporter) -> Path:
    """Fetch the official python batches into root with torchvision; any failure is one UserError. Never
    into a folder that holds something else (a run folder, a user's data): the download would mix with it."""
    others = _other_contents(root)
    if others:
        what = "is not a folder" if not root.is_dir() else f"holds {_listing(others)}"
        raise UserError(f"not downloading CIFAR-10 into {root}: it {what}; point $DISTILL_DATA (or --data with "
                        "--download) at an empty or new folder")
    report.say(f"CIFAR-10 is not in {show(root)}: downloading it once (about 170 MB)")
    # torchvision prints "Files already downloaded" on stdout, which must stay clean for --json,
    # and its download bar on stderr: both go to stderr, or nowhere when quiet.
    sink = io.StringIO() if report.quiet else sys.stderr
    try:
        root.mkdir(parents=True, exist_ok=True)
        from torchvision.datasets import CIFAR10

        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            CIFAR10(root=str(root), train=True, download=True)  # fetches and unpacks all 6 batches
    except Exception as err:  # offline: URLError, socket errors, checksum failures, a read-only folder ...
        raise UserError(NOT_DOWNLOADED.format(why=one_line(err))) from None
    if not _complete_cifar(root / CIFAR_DIR):
        raise UserError(NOT_DOWNLOADED.format(why=f"{root / CIFAR_DIR} lacks files afterwards"))
    return root / CIFAR_DIR


def _default_cifar(cache_dir: Path, report: Reporter) -> Path:
    """Official CIFAR-10 from $DISTILL_DATA or <cache>/data, downloaded there the first time; $DISTILL_DATA
    may also name any data --data takes (an archive, a folder holding one, an image-folder tree)."""
    root = default_data_dir(cache_dir)
    # <cache>/download is where earlier versions' --download put it: reuse, do not fetch again.
    for folder in (root, root / CIFAR_DIR, cache_dir / "download" / CIFAR_DIR):
        if _complete_cifar(folder):
            return folder
    if (root / CIFAR_ARCHIVE).is_file():  # a copied archive needs no network: unpacked via the cache
        return root / CIFAR_ARCHIVE
    if root.exists() and _other_contents(root):  # loaded as --data would be, or refused naming what is there: never downloaded into
        return root
    return _download(root, report)


def _download_root(path: Path, cache_dir: Path) -> Path:
    """The given folder when it can be created and written, else the default data folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return path if path.is_dir() and os.access(path, os.W_OK) else default_data_dir(cache_dir)


def _resolve_path(path: str | Path, cache_dir: Path, download: bool, report: Reporter) -> Path:
    path = Path(path).expanduser()
    holds_nothing = not path.exists() or (path.is_dir() and not list_visible(path))
    if holds_nothing and download:
        return _download(_download_root(path, cache_dir), report)
    if not path.exists():
        raise UserError(f"data path {path} does not exist; pass --data with an existing file or folder ({LAYOUTS})")
    return path


def _single_archive(folder: Path) -> Path | None:
    """cifar-10-python.tar.gz, or the only archive, inside a folder."""
    if (folder / CIFAR_ARCHIVE).is_file():
        return folder / CIFAR_ARCHIVE
    found = [Path(e.path) for e in list_visible(folder) if e.is_file() and is_archive(Path(e.name))]
    return found[0] if len(found) == 1 else None


def _load_path(path: Path, job: _Job, given_by: str) -> Dataset:
    """Any layout, whether --data or $DISTILL_DATA (given_by) names it."""
    if not path.is_dir():
        require_regular(path, path.stat())  # e.g. --data pointing at a FIFO
        if not is_archive(path):
            raise UserError(f"{path} ({given_by}) is not a .tar/.tar.gz/.tgz archive; point {given_by} at {LAYOUTS}")
        return _load_archive(path, job)
    layout = find_layout(path)
    if layout is not None:
        return _load_folder(*layout, job, where=path)
    archive = _single_archive(path)
    if archive is None:
        found = _listing([e.name for e in list_visible(path)]) or "nothing"
        raise UserError(f"{path} ({given_by}) holds no dataset; expected {LAYOUTS}; found {found}: "
                        f"point {given_by} at one")
    return _load_archive(archive, job)


def load_dataset(path: str | Path | None, image_size: int = 32, cache_dir: Path | None = None,
                 download: bool = False, *, quiet: bool = False) -> Dataset:
    """Decode a dataset once and cache it; later calls read the (verified) cache in a fraction of a second.

    path: CIFAR-10 python batches (cifar-10-python.tar.gz, a folder holding it, or
    cifar-10-batches-py/), an image-folder tree train/<class>/*, test/<class>/* (or a folder
    whose only subfolder is one), or a .tar/.tar.gz/.tgz of either. None: official CIFAR-10 from
    $DISTILL_DATA or <cache folder>/data, downloaded there through torchvision the first time ($DISTILL_DATA
    may also name any of the layouts above; a folder holding anything else is never downloaded into).
    download=True: a given path that is missing or empty is filled with a CIFAR-10 download.
    quiet: no status lines or progress on stderr (warnings, e.g. a damaged cache, still show).
    The result's .path is the resolved absolute path that was loaded, for resuming elsewhere.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image size {image_size!r} is not a positive integer; pass e.g. 32")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    job = _Job(image_size, cache_dir, Reporter(quiet))
    for folder in ("extracted", "tensors"):  # leftovers of runs killed midway (a scan of two folders)
        clean_stale(cache_dir / folder)
    if path is None:
        found, given_by = _default_cifar(cache_dir, job.report), "$DISTILL_DATA"
    else:
        found, given_by = _resolve_path(path, cache_dir, download, job.report), "--data"
    resolved = found.resolve()
    ds = _load_path(resolved, job, given_by)
    ds.path = str(resolved)
    return ds
