"""Image files -> uint8 (N, 3, S, S), decoded once, in a process pool for large sets."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from distill.errors import UserError

from .dataset import one_line

# Below this many files a pool costs more (worker start, pickling results) than it saves.
SERIAL_BELOW = 2000
CHUNKS_PER_WORKER = 8  # a few chunks per worker balance the load (and pace progress) without per-file tasks
SERIAL_CHUNKS = 50  # progress steps when decoding in this process
# Pillow's modes for 16-bit grayscale (PNG, TIFF); "I" (32-bit) is how it opens some 16-bit files.
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def _ignore(_n: int) -> None:
    pass


def _eight_bit(im: Image.Image) -> Image.Image:
    """16-bit grayscale -> 8-bit L by v8 = round(v16 / 257), the inverse of widening v8 to
    v8 * 257 (0 -> 0, 65535 -> 255, 257*k -> k). Pillow's convert("RGB") clips at 255 instead,
    which turns nearly every pixel white. Mode "I" follows the same rule, clipped to 0..65535."""
    v = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
    return Image.fromarray(((v + 128) // 257).astype(np.uint8))


def _to_rgb_array(im: Image.Image, size: int) -> np.ndarray:
    """Any mode (L, P, RGBA, CMYK, 16-bit, ...) and any size -> (size, size, 3) uint8, bicubic."""
    if im.mode in SIXTEEN_BIT_MODES:
        im = _eight_bit(im)
    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im)


def decode_chunk(paths: Sequence[str], size: int) -> np.ndarray:
    """Decode files in order into (n, 3, size, size) uint8; runs inside pool workers."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                out[i] = _to_rgb_array(im, size).transpose(2, 0, 1)
        except Exception as err:  # Pillow raises many types for broken files
            raise UserError(
                f"cannot decode image {path} ({one_line(err)}); replace or delete that file"
            ) from None
    return out


def resize_images(x: torch.Tensor, size: int, advance: Callable[[int], None] = _ignore) -> torch.Tensor:
    """(N, 3, h, w) uint8 -> (N, 3, size, size) with the same Pillow bicubic rule as files."""
    if x.shape[-2:] == (size, size):
        advance(len(x))
        return x
    planes = x.permute(0, 2, 3, 1).numpy()
    out = np.empty((len(x), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(planes):
        out[i] = _to_rgb_array(Image.fromarray(np.ascontiguousarray(img)), size).transpose(2, 0, 1)
        if i % 1000 == 999 or i == len(x) - 1:
            advance(i % 1000 + 1)
    return torch.from_numpy(out)


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds; spawn would re-import torch in each (seconds).
    # Workers only run Pillow and numpy, so fork's caveats about threads do not bite here.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _chunk_bounds(n: int, count: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, min(n, count) + 1).astype(int).tolist()
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def decode_images(paths: Sequence[str], size: int, advance: Callable[[int], None] = _ignore) -> torch.Tensor:
    """Decode all files (os.cpu_count() worker processes for large sets) into one tensor;
    advance(n) is called as chunks finish, for progress."""
    workers = os.cpu_count() or 1
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    view = out.numpy()  # shares memory: each chunk lands in place as soon as it is done
    if len(paths) < SERIAL_BELOW or workers == 1:
        for a, b in _chunk_bounds(len(paths), SERIAL_CHUNKS):
            view[a:b] = decode_chunk(paths[a:b], size)
            advance(b - a)
        return out
    with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
        bounds = _chunk_bounds(len(paths), workers * CHUNKS_PER_WORKER)
        jobs = {pool.submit(decode_chunk, paths[a:b], size): a for a, b in bounds}
        try:
            for job in as_completed(jobs):
                arr = job.result()  # re-raises a worker's UserError, which names the file
                view[jobs[job] : jobs[job] + len(arr)] = arr
                advance(len(arr))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # do not decode the rest for nothing
            raise
    return out
