"""Image files -> uint8 (N, 3, S, S), decoded once, in a process pool for large sets."""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from distill.errors import UserError

from .dataset import one_line

# Below this many files a pool costs more (worker start, pickling results) than it saves.
SERIAL_BELOW = 2000
CHUNKS_PER_WORKER = 4  # a few chunks per worker balance the load without per-file tasks


def _to_rgb_array(im: Image.Image, size: int) -> np.ndarray:
    """Any mode (L, P, RGBA, CMYK, ...) and any size -> (size, size, 3) uint8, bicubic."""
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


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, h, w) uint8 -> (N, 3, size, size) with the same Pillow bicubic rule as files."""
    if x.shape[-2:] == (size, size):
        return x
    planes = x.permute(0, 2, 3, 1).numpy()
    out = np.empty((len(x), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(planes):
        out[i] = _to_rgb_array(Image.fromarray(np.ascontiguousarray(img)), size).transpose(2, 0, 1)
    return torch.from_numpy(out)


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds; spawn would re-import torch in each (seconds).
    # Workers only run Pillow and numpy, so fork's caveats about threads do not bite here.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _chunk_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    count = min(n, workers * CHUNKS_PER_WORKER)
    edges = np.linspace(0, n, count + 1).astype(int).tolist()
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def decode_images(paths: Sequence[str], size: int) -> torch.Tensor:
    """Decode all files (os.cpu_count() worker processes for large sets) into one tensor."""
    workers = os.cpu_count() or 1
    if len(paths) < SERIAL_BELOW or workers == 1:
        return torch.from_numpy(decode_chunk(paths, size))
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    view = out.numpy()  # shares memory: each chunk lands in place as soon as it is done
    with ProcessPoolExecutor(workers, mp_context=_mp_context()) as pool:
        jobs = {pool.submit(decode_chunk, paths[a:b], size): a for a, b in _chunk_bounds(len(paths), workers)}
        try:
            for job in as_completed(jobs):
                arr = job.result()  # re-raises a worker's UserError, which names the file
                view[jobs[job] : jobs[job] + len(arr)] = arr
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # do not decode the rest for nothing
            raise
    return out
