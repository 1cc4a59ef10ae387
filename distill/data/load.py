"""load_dataset: any accepted path (or a download) -> a cached, decoded Dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from distill.errors import UserError

from . import decode
from .archive import extract_archive, is_archive
from .cache import cache_key, cache_path, read_cache, write_cache
from .cifar import CIFAR_FILES, cifar_files, read_cifar
from .dataset import Dataset, default_cache_dir, ensure_dir, one_line
from .folders import is_dir, list_visible, scan_tree

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
LAYOUTS = ("train/<class>/ and test/<class>/ image folders, CIFAR-10 python batches "
           f"({CIFAR_DIR}/ or {CIFAR_ARCHIVE}), or a .tar/.tar.gz/.tgz of either")
KIND_TEXT = {"cifar": "CIFAR-10 python batches", "folders": "image folders"}
Files = list[tuple[str, int, int]]  # (relative path, size, mtime_ns) of every source file


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


def _plan(kind: str, root: Path, image_size: int, source: str) -> tuple[Files, Callable[[], Dataset]]:
    """The files that key the cache, and how to decode them (scanning a tree only once)."""
    if kind == "cifar":
        files = [(p.name, *_stat(p)) for p in cifar_files(root)]

        def build() -> Dataset:
            train_x, train_y, test_x, test_y, classes = read_cifar(root)
            resize = decode.resize_images
            return Dataset(resize(train_x, image_size), train_y, resize(test_x, image_size), test_y, classes, source)

        return files, build
    train, test = scan_tree(root)

    def build() -> Dataset:
        x_tr, x_te = (decode.decode_images([f.path for f in s.files], image_size) for s in (train, test))
        y_tr, y_te = (torch.tensor(s.labels, dtype=torch.int64) for s in (train, test))
        return Dataset(x_tr, y_tr, x_te, y_te, train.classes, source)

    return [(f.rel, f.size, f.mtime_ns) for f in train.files + test.files], build


def _cached(key: str, cache_dir: Path, image_size: int, build: Callable[[], Dataset]) -> Dataset:
    """Read <cache_dir>/tensors/<key>.pt, or build the Dataset and write it there."""
    path = cache_path(cache_dir, key)
    ds = read_cache(path, image_size)
    if ds is None:
        ds = build()
        write_cache(path, ds)
    return ds


def _load_archive(archive: Path, image_size: int, cache_dir: Path) -> Dataset:
    # Keyed on the archive file alone, so a cache hit needs neither unpacking nor a scan.
    key = cache_key(archive, image_size, [(archive.name, *_stat(archive))])

    def build() -> Dataset:
        layout = find_layout(extract_archive(archive, cache_dir))
        if layout is None:
            raise UserError(f"archive {archive} holds no dataset; expected {LAYOUTS}")
        return _plan(*layout, image_size, f"{archive.name} ({KIND_TEXT[layout[0]]})")[1]()

    return _cached(key, cache_dir, image_size, build)


def _load_folder(kind: str, root: Path, image_size: int, cache_dir: Path, label: str) -> Dataset:
    files, build = _plan(kind, root, image_size, f"{label} ({KIND_TEXT[kind]})")
    return _cached(cache_key(root, image_size, files), cache_dir, image_size, build)


def _download(root: Path) -> Path:
    """Fetch the official python batches with torchvision; any failure becomes one UserError."""
    ensure_dir(root)
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(root=str(root), train=True, download=True)  # fetches and unpacks all 6 batches
    except Exception as err:  # offline: URLError, socket errors, checksum failures, ...
        raise UserError(
            f"CIFAR-10 could not be downloaded to {root} ({one_line(err)}); place {CIFAR_ARCHIVE} or an "
            "image folder tree (train/<class>/, test/<class>/) on this machine and pass it with --data"
        ) from None
    return root / CIFAR_DIR


def _download_root(path: Path, cache_dir: Path) -> Path:
    """The given folder when it can be created and written, else <cache_dir>/download."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return path if path.is_dir() and os.access(path, os.W_OK) else cache_dir / "download"


def _resolve_path(path: str | Path | None, cache_dir: Path, download: bool) -> Path:
    if path is None:
        fallback = cache_dir / "download"
        if (fallback / CIFAR_DIR).is_dir():  # an earlier download
            return fallback / CIFAR_DIR
        if not download:
            raise UserError(f"no dataset given; pass --data with {LAYOUTS}, or add --download to fetch CIFAR-10")
        return _download(fallback)
    path = Path(path).expanduser()
    holds_nothing = not path.exists() or (path.is_dir() and not list_visible(path))
    if holds_nothing and download:
        return _download(_download_root(path, cache_dir))
    if not path.exists():
        raise UserError(f"data path {path} does not exist; pass --data with an existing file or folder ({LAYOUTS})")
    return path


def _single_archive(folder: Path) -> Path | None:
    """cifar-10-python.tar.gz, or the only archive, inside a folder."""
    if (folder / CIFAR_ARCHIVE).is_file():
        return folder / CIFAR_ARCHIVE
    found = [Path(e.path) for e in list_visible(folder) if e.is_file() and is_archive(Path(e.name))]
    return found[0] if len(found) == 1 else None


def load_dataset(path: str | Path | None, image_size: int = 32, cache_dir: Path | None = None,
                 download: bool = False) -> Dataset:
    """Decode a dataset once and cache it; later calls read the cache (about a second for CIFAR-10).

    path: CIFAR-10 python batches (cifar-10-python.tar.gz, a folder holding it, or
    cifar-10-batches-py/), an image-folder tree train/<class>/*, test/<class>/* (or a folder
    whose only subfolder is one), or a .tar/.tar.gz/.tgz of either. None (or an empty or
    missing path) with download=True fetches CIFAR-10 through torchvision.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image size {image_size!r} is not a positive integer; pass e.g. 32")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = _resolve_path(path, cache_dir, download)
    if path.is_file():
        if not is_archive(path):
            raise UserError(f"{path} is not a .tar/.tar.gz/.tgz archive; pass --data with {LAYOUTS}")
        return _load_archive(path, image_size, cache_dir)
    layout = find_layout(path)
    if layout is not None:
        return _load_folder(*layout, image_size, cache_dir, label=layout[1].name or str(layout[1]))
    archive = _single_archive(path)
    if archive is None:
        raise UserError(f"{path} holds no dataset; expected {LAYOUTS}; point --data at one")
    return _load_archive(archive, image_size, cache_dir)
