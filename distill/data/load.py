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
from .cifar import OFFICIAL, Official, cifar_files, holds_batches, is_complete, read_cifar
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

FOLDERS = "folders"  # the kind of an image-folder tree; python batches are of the kind their --dataset names
Files = list[tuple[str, int, int]]  # (relative path, size, mtime_ns) of every source file
# What a torchvision download (finished or cut short) leaves behind, of either set: one data folder holds both.
DOWNLOAD_LEAVES = tuple(name for o in OFFICIAL.values() for name in (o.folder, o.archive))


def layouts(official: Official) -> str:
    """What --data (or $DISTILL_DATA) may name when official is the --dataset."""
    return (f"train/<class>/ and test/<class>/ image folders, {official.title} python batches "
            f"({official.folder}/ or {official.archive}), or a .tar/.tar.gz/.tgz of either")


def kind_text(kind: str) -> str:
    return "image folders" if kind == FOLDERS else f"{OFFICIAL[kind].title} python batches"


@dataclass
class _Job:
    """What every step of one load_dataset call needs."""

    image_size: int
    cache_dir: Path
    report: Reporter
    official: Official  # the --dataset: the python batches accepted, and what is downloaded
    coarse: bool  # CIFAR-100's superclasses as the labels
    given_by: str = "--data"  # what named the data: --data, or $DISTILL_DATA for the default

    @property
    def at(self) -> str:
        return f"{self.image_size}x{self.image_size}"

    @property
    def labels(self) -> str:
        """Which official labels, in the cache key of python batches (and of archives, whose kind is only known once
        unpacked): CIFAR-10, CIFAR-100 and its superclasses never share a decode. Empty for CIFAR-10, as in the keys
        made before there was a choice, so that those caches stay valid."""
        tag = self.official.name + ("-coarse" if self.coarse else "")
        return "" if tag == "cifar10" else tag


def _is_tree(path: Path) -> bool:
    return (path / "train").is_dir() or (path / "test").is_dir()


def _own_first(want: Official) -> list[Official]:
    """The --dataset's own files first: a folder holding both sets' downloads gives the one asked for."""
    return [want, *(o for o in OFFICIAL.values() if o is not want)]


def find_layout(path: Path, want: Official, depth: int = 1) -> tuple[str, Path] | None:
    """(kind, root) for a folder in any layout, or holding exactly one subfolder that is (archives usually wrap
    everything in one top folder): kind is FOLDERS, or the --dataset name of the python batches found (the other
    set's too, so that the refusal can name them)."""
    order = _own_first(want)
    for official in order:
        if holds_batches(path, official):
            return official.name, path
    if _is_tree(path):
        if not ((path / "train").is_dir() and (path / "test").is_dir()):
            raise UserError(f"{path} needs both train/ and test/ folders (one is missing); add it")
        return FOLDERS, path
    for official in order:
        if (path / official.folder).is_dir():
            return official.name, path / official.folder
    subdirs = [Path(e.path) for e in list_visible(path) if is_dir(e)]
    if depth > 0 and len(subdirs) == 1:
        return find_layout(subdirs[0], want, depth - 1)
    return None


def _check_kind(kind: str, job: _Job, where: Path) -> None:
    """Python batches only of the --dataset (CIFAR-10 is never read as CIFAR-100, nor the reverse), and the
    superclasses only from CIFAR-100's: checked before any cache is read."""
    want = job.official
    if kind == FOLDERS:
        if job.coarse:
            raise UserError(f"--coarse-labels takes CIFAR-100's superclasses from its python batches, but {where} "
                            f"({job.given_by}) holds image folders, whose classes are their folder names: "
                            "drop --coarse-labels")
    elif kind != want.name:
        found = OFFICIAL[kind]
        raise UserError(f"{where} ({job.given_by}) holds {found.title} python batches, not {want.title} "
                        f"(--dataset {want.name}): pass --dataset {found.name} to use them, or point "
                        f"{job.given_by} at {want.title} ({want.archive} or {want.folder}/)")


def _source(name: str, kind: str, job: _Job) -> str:
    """What a Dataset came from, e.g. "cifar-100-python.tar.gz (CIFAR-100 python batches, superclasses)"."""
    coarse = ", superclasses" if job.coarse and kind != FOLDERS else ""
    return f"{readable(name)} ({kind_text(kind)}{coarse})"


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _plan(kind: str, root: Path, job: _Job, name: str, where: Path) -> tuple[Files, Callable[[], Dataset]]:
    """The files that key the cache, and how to decode them (scanning a tree only once)."""
    _check_kind(kind, job, where)
    say, source = job.report.say, _source(name, kind, job)
    if kind != FOLDERS:
        files = [(p.name, *_stat(p)) for p in cifar_files(root, job.official)]

        def build() -> Dataset:
            say(f"loading {show(where)}: reading {kind_text(kind)} at {job.at} (cached for next time)")
            train_x, train_y, test_x, test_y, classes = read_cifar(root, job.official, job.coarse)
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
    named = [o.name for o in OFFICIAL.values() if o.archive == archive.name]
    if named:  # the other set's official archive is refused by its name, before 170 MB are unpacked
        _check_kind(named[0], job, archive)
    # Keyed on the archive file alone (and the labels asked for), so a cache hit needs neither unpacking nor a scan.
    key = cache_key(archive, job.image_size, [(archive.name, *_stat(archive))], job.labels)

    def build() -> Dataset:
        layout = find_layout(extract_archive(archive, job.cache_dir, job.report), job.official)
        if layout is None:
            raise UserError(f"archive {archive} holds no dataset; expected {layouts(job.official)}")
        return _plan(*layout, job, archive.name, archive)[1]()

    return _cached(key, 1, job, archive, build)


def _load_folder(kind: str, root: Path, job: _Job, where: Path) -> Dataset:
    files, build = _plan(kind, root, job, root.name or str(root), where)
    labels = "" if kind == FOLDERS else job.labels  # a tree's labels are its folders, whatever --dataset says
    return _cached(cache_key(root, job.image_size, files, labels), len(files), job, where, build)


def _listing(names: list[str], most: int = 4) -> str:
    shown = ", ".join(readable(n) for n in names[:most])
    return shown + (f" and {len(names) - most:,} more" if len(names) > most else "")


def _other_contents(root: Path) -> list[str]:
    """What root holds besides official downloads: a file (or a broken link) is itself, a missing folder nothing."""
    if not root.is_dir():
        return [root.name] if root.exists() or root.is_symlink() else []
    return [e.name for e in list_visible(root) if e.name not in DOWNLOAD_LEAVES]


def _not_downloaded(official: Official, why: str) -> UserError:
    return UserError(f"{official.title} is not downloaded and the download failed ({why}): pass --data PATH or set "
                     f"$DISTILL_DATA to any of: {layouts(official)}")


def _download(root: Path, job: _Job) -> Path:
    """Fetch the --dataset's python batches into root with torchvision; any failure is one UserError. Never
    into a folder that holds something else (a run folder, a user's data): the download would mix with it.
    The other set's download may be there: each has its own folder and archive name."""
    official, report = job.official, job.report
    others = _other_contents(root)
    if others:
        what = "is not a folder" if not root.is_dir() else f"holds {_listing(others)}"
        raise UserError(f"not downloading {official.title} into {root}: it {what}; point $DISTILL_DATA (or --data "
                        "with --download) at an empty or new folder")
    report.say(f"{official.title} is not in {show(root)}: downloading it once (about 170 MB)")
    # torchvision prints "Files already downloaded" on stdout, which must stay clean for --json,
    # and its download bar on stderr: both go to stderr, or nowhere when quiet.
    sink = io.StringIO() if report.quiet else sys.stderr
    try:
        root.mkdir(parents=True, exist_ok=True)
        import torchvision.datasets

        fetch = getattr(torchvision.datasets, official.torchvision)
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            fetch(root=str(root), train=True, download=True)  # fetches and unpacks every file
    except Exception as err:  # offline: URLError, socket errors, checksum failures, a read-only folder ...
        raise _not_downloaded(official, one_line(err)) from None
    if not is_complete(root / official.folder, official):
        raise _not_downloaded(official, f"{root / official.folder} lacks files afterwards")
    return root / official.folder


def _default_data(job: _Job) -> Path:
    """The --dataset from $DISTILL_DATA or <cache>/data, downloaded there the first time; $DISTILL_DATA
    may also name any data --data takes (an archive, a folder holding one, an image-folder tree)."""
    official, root = job.official, default_data_dir(job.cache_dir)
    # <cache>/download is where earlier versions' --download put CIFAR-10: reuse, do not fetch again.
    for folder in (root, root / official.folder, job.cache_dir / "download" / official.folder):
        if is_complete(folder, official):
            return folder
    if (root / official.archive).is_file():  # a copied archive needs no network: unpacked via the cache
        return root / official.archive
    if root.exists() and _other_contents(root):  # loaded as --data would be, or refused naming what is there: never downloaded into
        return root
    return _download(root, job)


def _download_root(path: Path, cache_dir: Path) -> Path:
    """The given folder when it can be created and written, else the default data folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return path if path.is_dir() and os.access(path, os.W_OK) else default_data_dir(cache_dir)


def _resolve_path(path: str | Path, job: _Job, download: bool) -> Path:
    path = Path(path).expanduser()
    holds_nothing = not path.exists() or (path.is_dir() and not list_visible(path))
    if holds_nothing and download:
        return _download(_download_root(path, job.cache_dir), job)
    if not path.exists():
        raise UserError(f"data path {path} does not exist; pass --data with an existing file or folder "
                        f"({layouts(job.official)})")
    return path


def _single_archive(folder: Path) -> Path | None:
    """The only archive inside a folder."""
    found = [Path(e.path) for e in list_visible(folder) if e.is_file() and is_archive(Path(e.name))]
    return found[0] if len(found) == 1 else None


def _load_path(path: Path, job: _Job) -> Dataset:
    """Any layout, whether --data or $DISTILL_DATA (job.given_by) names it."""
    given_by = job.given_by
    if not path.is_dir():
        require_regular(path, path.stat())  # e.g. --data pointing at a FIFO
        if not is_archive(path):
            raise UserError(f"{path} ({given_by}) is not a .tar/.tar.gz/.tgz archive; point {given_by} at "
                            f"{layouts(job.official)}")
        return _load_archive(path, job)
    layout = find_layout(path, job.official)
    if layout is not None and layout[0] in (FOLDERS, job.official.name):
        return _load_folder(*layout, job, where=path)
    if (path / job.official.archive).is_file():  # the --dataset's archive, maybe beside the other set's batches
        return _load_archive(path / job.official.archive, job)
    if layout is not None:  # only the other set's batches: refused, naming them
        return _load_folder(*layout, job, where=path)
    archive = _single_archive(path)
    if archive is None:
        found = _listing([e.name for e in list_visible(path)]) or "nothing"
        raise UserError(f"{path} ({given_by}) holds no dataset; expected {layouts(job.official)}; found {found}: "
                        f"point {given_by} at one")
    return _load_archive(archive, job)


def _job(image_size: int, cache_dir: Path | None, quiet: bool, dataset: str, coarse_labels: bool) -> _Job:
    """The checked arguments of one load_dataset call."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image size {image_size!r} is not a positive integer; pass e.g. 32")
    if dataset not in OFFICIAL:
        raise UserError(f"unknown --dataset '{dataset}': choose one of {', '.join(OFFICIAL)}")
    OFFICIAL[dataset].keys(coarse_labels)  # --coarse-labels with a set that has no superclasses: refused now
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _Job(image_size, cache_dir, Reporter(quiet), OFFICIAL[dataset], coarse_labels)


def load_dataset(path: str | Path | None, image_size: int = 32, cache_dir: Path | None = None,
                 download: bool = False, *, quiet: bool = False, dataset: str = "cifar10",
                 coarse_labels: bool = False) -> Dataset:
    """Decode a dataset once and cache it; later calls read the (verified) cache in a fraction of a second.

    dataset: "cifar10" or "cifar100", the official set whose python batches path may hold and that is
    downloaded; coarse_labels: CIFAR-100's 20 superclasses instead of its 100 classes.
    path: the set's python batches (cifar-10-python.tar.gz / cifar-100-python.tar.gz, a folder holding it, or
    the extracted cifar-10-batches-py/ / cifar-100-python/), an image-folder tree train/<class>/*, test/<class>/*
    (or a folder whose only subfolder is one), or a .tar/.tar.gz/.tgz of either. None: the official set from
    $DISTILL_DATA or <cache folder>/data, downloaded there through torchvision the first time ($DISTILL_DATA
    may also name any of the layouts above; a folder holding anything else is never downloaded into).
    download=True: a given path that is missing or empty is filled with a download of the set.
    quiet: no status lines or progress on stderr (warnings, e.g. a damaged cache, still show).
    The result's .path is the resolved absolute path that was loaded, for resuming elsewhere.
    """
    job = _job(image_size, cache_dir, quiet, dataset, coarse_labels)
    for folder in ("extracted", "tensors"):  # leftovers of runs killed midway (a scan of two folders)
        clean_stale(job.cache_dir / folder)
    if path is None:
        job.given_by = "$DISTILL_DATA"
        found = _default_data(job)
    else:
        found = _resolve_path(path, job, download)
    resolved = found.resolve()
    ds = _load_path(resolved, job)
    ds.path = str(resolved)
    return ds
