"""Image-folder trees: train/<class>/* and test/<class>/*, scanned without following loops."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from distill.errors import UserError

from .dataset import one_line, readable
from .files import require_regular

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


@dataclass
class FileEntry:
    path: str      # absolute or root-joined path, as opened
    rel: str       # relative to the tree root: part of the cache key
    size: int
    mtime_ns: int


@dataclass
class SplitFiles:
    classes: list[str]
    files: list[FileEntry]
    labels: list[int]


def _visible(name: str) -> bool:
    # Hidden files and macOS resource forks are never images of the dataset.
    return not name.startswith(".") and name != "__MACOSX"


def list_visible(folder: str | Path) -> list[os.DirEntry]:
    """Non-hidden entries of a folder, sorted by name; unreadable folders become a UserError."""
    try:
        with os.scandir(folder) as it:
            return sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
    except OSError as err:
        raise UserError(f"cannot list folder {folder} ({one_line(err)}); fix its permissions") from None


def is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks
    except OSError as err:  # e.g. ELOOP for a link that points at itself
        raise UserError(f"cannot follow {entry.path} ({one_line(err)}); remove or fix that link") from None


def _enter(folder: str, seen: set[tuple[int, int]]) -> None:
    """Refuse a folder reached a second time: a symlink loop (or a duplicate link) would
    otherwise recurse forever or count the same images twice."""
    st = os.stat(folder)
    key = (st.st_dev, st.st_ino)
    if key in seen:
        raise UserError(f"folder {folder} is reached twice through a symlink (a loop or a duplicate "
                        "link); remove that link from the dataset tree")
    seen.add(key)


def image_entries(folder: str, seen: set[tuple[int, int]]) -> list[os.DirEntry]:
    """Every visible entry named like an image under `folder` (subfolders included, loops refused), unsorted
    and not yet checked to be a readable regular file."""
    found: list[os.DirEntry] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        _enter(current, seen)
        for entry in list_visible(current):
            if is_dir(entry):
                stack.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTS:
                found.append(entry)
    return found


def _class_images(folder: str, root: Path, seen: set[tuple[int, int]]) -> list[FileEntry]:
    """All image files under one class folder (subfolders included), sorted by path."""
    out: list[FileEntry] = []
    for entry in image_entries(folder, seen):
        try:
            st = entry.stat()
        except OSError as err:  # a dangling symlink named like an image
            raise UserError(f"cannot read {entry.path} ({one_line(err)}); fix or remove it") from None
        require_regular(entry.path, st)  # opening a FIFO named x.png would block forever
        out.append(FileEntry(entry.path, os.path.relpath(entry.path, root), st.st_size, st.st_mtime_ns))
    return sorted(out, key=lambda f: f.rel)


def _class_dirs(split_dir: Path) -> dict[str, str]:
    dirs: dict[str, str] = {}
    for entry in (e for e in list_visible(str(split_dir)) if is_dir(e)):
        name = readable(entry.name)  # the class's name in every table, chart and JSON file
        if name in dirs:  # a folder literally named like another's \xNN rendering: rare, but never merged
            raise UserError(f"class folders {dirs[name]} and {entry.path} would both be class '{name}'; "
                            "rename one of them")
        dirs[name] = entry.path
    return dirs


def _check_same_classes(root: Path, train: dict[str, str], test: dict[str, str]) -> None:
    if not train:
        raise UserError(f"{root / 'train'} has no class folders; put images in train/<class>/ and test/<class>/")
    if set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        raise UserError(f"train/ and test/ in {root} have different class folders (only in train: "
                        f"{only_train or 'none'}; only in test: {only_test or 'none'}); make them match")


def scan_tree(root: Path) -> tuple[SplitFiles, SplitFiles]:
    """Scan root/train and root/test: sorted classes, files and labels for each split."""
    seen: set[tuple[int, int]] = set()
    dirs = {split: _class_dirs(root / split) for split in ("train", "test")}
    _check_same_classes(root, dirs["train"], dirs["test"])
    classes = sorted(dirs["train"])
    result = []
    for split in ("train", "test"):
        files: list[FileEntry] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            found = _class_images(dirs[split][name], root, seen)
            if not found:
                raise UserError(f"class folder {dirs[split][name]} holds no images "
                                f"({', '.join(sorted(IMAGE_EXTS))}); add images or remove the folder")
            files += found
            labels += [label] * len(found)
        result.append(SplitFiles(classes, files, labels))
    return result[0], result[1]
