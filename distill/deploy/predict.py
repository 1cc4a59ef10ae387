"""`distill predict`: classify image files, folders and archives with a checkpoint's own preprocessing.

Each image goes through the decode of training data (distill.data.decode: any mode to RGB, 16-bit scaled by
1/257, bicubic to the run's --image-size), then the checkpoint's Preprocess (resize to the model's input size
when the run used --resize, normalization) and distill.engine.loop.predict, so a file is classified exactly as it
would have been as a test image. Folders are scanned like data sets (recursively, hidden files skipped, symlink
loops refused, sorted by path); .tar archives are unpacked with the data sets' checks, .zip ones by zipfile
(which drops absolute paths and '..'), into a temporary folder removed afterwards. Whatever cannot be read (a
broken image, a FIFO, a device, a broken, encrypted or unsafe archive) is named on stderr and skipped; the rest
is still classified.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from distill.augment.ops import Preprocess
from distill.engine.checkpoint import decode_size, load_checkpoint
from distill.data.archive import extract_archive, is_archive
from distill.data.dataset import one_line
from distill.data.decode import decode_chunk
from distill.data.files import special_kind
from distill.data.folders import IMAGE_EXTS, image_entries
from distill.errors import UserError
from distill.engine.evaluate import model_from_checkpoint

MAX_UNZIPPED = 8 << 30  # bytes a .zip may declare: a zip bomb declares far more than its own size
ZIP_ENCRYPTED = 0x1  # bit 0 of a zip member's flags (APPNOTE 4.4.4): zipfile would need its password
ZIP_METHODS = {getattr(zipfile, name) for name in ("ZIP_STORED", "ZIP_DEFLATED", "ZIP_BZIP2", "ZIP_LZMA",
                                                   "ZIP_ZSTANDARD") if hasattr(zipfile, name)}  # those it reads


@dataclass
class Loaded:
    """A checkpoint ready for inference: its evaluated weights and the preprocessing it was trained with."""

    ck: dict
    model: nn.Module
    preprocess: Preprocess
    size: int  # side length images are decoded to: the run's --image-size (the model may resize it further)

    @property
    def classes(self) -> list[str]:
        return self.ck["classes"]


def load_for_inference(path: Path, device: torch.device) -> Loaded:
    ck = load_checkpoint(path)
    model, preprocess = model_from_checkpoint(ck, path, device)
    return Loaded(ck, model, preprocess, decode_size(ck))


# ------------------------------------------------------------------------------------ finding images


@dataclass
class Item:
    name: str  # as shown: the path as given, or ARCHIVE:MEMBER
    path: str  # the file read: for an archive member, its unpacked copy
    problem: str | None = None  # why it cannot be read, when that was found while looking for images


def find_images(paths: list[Path], stack: contextlib.ExitStack) -> list[Item]:
    """The images at each path in order; a path that cannot be read (a broken or encrypted archive, a folder with
    a symlink loop) becomes one unreadable item, so that it is named and the other paths are still classified."""
    items: list[Item] = []
    for path in paths:
        try:
            items += images_at(path, stack)
        except UserError as err:
            items.append(Item(str(path), str(path), problem=str(err)))
    if not items:
        raise UserError(f"no images found in {', '.join(map(str, paths))} (looked for "
                        f"{', '.join(sorted(IMAGE_EXTS))}): pass image files, folders or archives of them")
    return items


def images_at(path: Path, stack: contextlib.ExitStack) -> list[Item]:
    if path.is_dir():
        return folder_images(path)
    if not (is_archive(path) or path.name.lower().endswith(".zip")):
        return [Item(str(path), str(path))]  # named explicitly: tried whatever its extension
    problem = file_problem(str(path))  # before the archive is opened: reading a FIFO would block forever
    if problem:
        raise UserError(problem)
    return archive_images(path, Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distill-"))))


def folder_images(folder: Path, archive: Path | None = None) -> list[Item]:
    # The data sets' scan of a class folder: the same files in the same order as training has them. Each file is
    # checked when it is read (decode), so one FIFO or dangling link is named and skipped, not the whole folder.
    found = sorted((os.path.relpath(entry.path, folder), entry.path) for entry in image_entries(str(folder), set()))
    return [Item(f"{archive}:{rel}" if archive else path, path) for rel, path in found]


def archive_images(archive: Path, tmp: Path) -> list[Item]:
    root = unzip(archive, tmp / "zip") if archive.name.lower().endswith(".zip") else extract_archive(archive, tmp)
    return folder_images(root, archive)


def unzip(archive: Path, dest: Path) -> Path:
    """Unpack a .zip's image files; zipfile drops absolute paths and '..' and never creates links."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_EXTS]
            check_zip_members(archive, members)
            dest.mkdir()  # also for a zip without images: then "no images found", not an unlistable folder
            zf.extractall(dest, members)  # a member larger than it declares fails its CRC check here
    # RuntimeError: a method of ZIP_METHODS whose module (bz2, lzma) this Python was built without
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, RuntimeError) as err:
        raise UserError(f"cannot unpack archive {archive} ({one_line(err)}): check that it is complete, or unpack "
                        f"it yourself and pass the folder") from None
    return dest


def check_zip_members(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    if sum(m.file_size for m in members) > MAX_UNZIPPED:
        raise UserError(f"archive {archive} unpacks to more than {MAX_UNZIPPED >> 30} GiB: refusing it "
                        f"(a zip bomb?); unpack it yourself and pass the folder")
    encrypted = [m.filename for m in members if m.flag_bits & ZIP_ENCRYPTED]
    if encrypted:
        raise UserError(f"archive {archive} is encrypted ({encrypted[0]} needs a password): unpack it yourself "
                        f"and pass the folder")
    other = [m for m in members if m.compress_type not in ZIP_METHODS]
    if other:
        method = zipfile.compressor_names.get(other[0].compress_type, f"method {other[0].compress_type}")
        raise UserError(f"archive {archive} is compressed with {method} ({other[0].filename}), which Python's "
                        f"zipfile cannot read: unpack it yourself and pass the folder")


def file_problem(path: str) -> str | None:
    """Why `path` cannot be read as an image file, or None: predict's words for what training refuses."""
    try:
        kind = special_kind(os.stat(path).st_mode)
    except OSError as err:  # a dangling symlink named like an image
        return f"cannot read {path} ({one_line(err)}): fix or remove that link"
    return f"{path} is {kind}, not an image file: skipped it (predict reads regular files only)" if kind else None


# ----------------------------------------------------------------------------------- classifying


def decode(item: Item, size: int) -> torch.Tensor | None:
    """uint8 (3, size, size) exactly as training decodes, or None after one line on stderr naming the file."""
    problem = item.problem or file_problem(item.path)
    if problem is None:
        try:
            return torch.from_numpy(decode_chunk([item.path], size)[0])
        except UserError as err:
            problem = str(err)
    # decode_chunk names the file it opened: for an archive member, a temporary copy the user never saw
    print(f"error: {problem.replace(item.path, item.name)}", file=sys.stderr, flush=True)
    return None


def classify(loaded: Loaded, x: torch.Tensor, top_k: int, tta: bool) -> list[list[dict]]:
    from distill.engine.evaluate import predict

    device = next(loaded.model.parameters()).device
    amp = torch.bfloat16 if device.type == "cuda" else None  # as `distill evaluate` does
    probs = predict(loaded.model, loaded.preprocess, x.to(device), len(x), tta, amp, False)
    values, indices = probs.topk(top_k, dim=1)
    return [[{"class": loaded.classes[i], "probability": p} for p, i in zip(ps, ids)]
            for ps, ids in zip(values.tolist(), indices.tolist())]


def predict_paths(checkpoint: Path, paths: list[Path], top_k: int, tta: bool, device: str, batch_size: int,
                  emit: Callable[[dict], None] | None = None) -> list[dict]:
    """{"file", "top"} per image in order ("top": None when it could not be read); `emit` sees each as it is done."""
    from distill.engine.device import resolve_device

    loaded = load_for_inference(checkpoint, resolve_device(device))
    if top_k > len(loaded.classes):
        raise UserError(f"--top-k must be at most {len(loaded.classes)}, the number of classes of {checkpoint} "
                        f"(got {top_k})")
    rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        items = find_images(paths, stack)
        for start in range(0, len(items), batch_size):
            batch = [(item, decode(item, loaded.size)) for item in items[start:start + batch_size]]
            good = [(item, x) for item, x in batch if x is not None]
            tops = iter(classify(loaded, torch.stack([x for _, x in good]), top_k, tta) if good else [])
            for item, x in batch:
                rows.append({"file": item.name, "top": None if x is None else next(tops)})
                if emit and x is not None:
                    emit(rows[-1])
    return rows


def print_predictions(rows: list[dict]) -> None:
    """A table of file and top-k classes. A long file name is folded after its path separators only, never inside
    a name; when a part of it does not fit beside the classes, each class goes over its percentage, and when it
    still does not fit, the table is wider than the terminal."""
    from rich.console import Console
    from rich.measure import Measurement

    done = [r for r in rows if r["top"] is not None]
    if not done:
        return
    console = Console(highlight=False, markup=False)  # class and file names are text, not rich markup
    unbounded = console.options.update_width(1 << 20)  # what the table needs, not what the terminal has

    def needed(table) -> int:
        return Measurement.get(console, unbounded, table).maximum

    widest = max(widest_part(r["file"]) for r in done)
    for between in (" ", "\n"):  # class and percentage side by side, else one over the other
        room = console.width - (needed(prediction_table(done, [""] * len(done), between)) - len("file"))
        if room >= widest:
            break
    table = prediction_table(done, [fold_at_separators(r["file"], max(room, widest)) for r in done], between)
    console.width = max(console.width, needed(table))
    console.print(table)


def prediction_table(done: list[dict], file_cells: list[str], between: str):
    from rich.table import Table

    from distill.text import percent

    table = Table()
    table.add_column("file", no_wrap=True)  # folded by fold_at_separators: rich would break names anywhere
    ranks = len(done[0]["top"])
    for rank in range(ranks):
        table.add_column(f"top {rank + 1}" if ranks > 1 else "class", no_wrap=True)
    for row, cell in zip(done, file_cells):
        table.add_row(cell, *(f"{t['class']}{between}{percent(t['probability'])}" for t in row["top"]))
    return table


def path_parts(name: str) -> list[str]:
    """A file name cut after each path separator: "a/b/c.png" -> ["a/", "b/", "c.png"]."""
    return re.findall(r"[^/]*/|[^/]+", name)


def widest_part(name: str) -> int:
    from rich.cells import cell_len

    return max(map(cell_len, path_parts(name)))


def fold_at_separators(name: str, width: int) -> str:
    """`name` over lines of at most `width` terminal cells, each line ending at a path separator; a part wider
    than `width` stays whole on a line of its own."""
    from rich.cells import cell_len

    lines = [""]
    for part in path_parts(name):
        if lines[-1] and cell_len(lines[-1] + part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)
