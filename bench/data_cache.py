"""Time distill.data on real data: unpack, decode + cache write, cache read, channel stats.

    .venv/bin/python bench/data_cache.py --cache-dir /tmp/dc [--data PATH] [--image-size 32]

The cache dir must be new or empty, so the first load really is cold. --data defaults to the shared JPEG copy
beside the repository, ../shared/data/cifar10-jpeg.tar.gz (from the repository root, wherever it is run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, not installed
from distill.data import channel_stats, load_dataset  # noqa: E402
from distill.data.archive import extract_archive, is_archive  # noqa: E402
from distill.data.folders import scan_tree  # noqa: E402
from distill.data.load import find_layout  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label:<48} {time.perf_counter() - start:7.2f} s")
    return result


def _mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data} not found: pass --data PATH (any data distill takes)")
    if args.cache_dir.exists() and any(args.cache_dir.iterdir()):
        sys.exit(f"{args.cache_dir} is not empty; give a fresh cache dir so the first load is cold")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, data {args.data}")
    load = lambda: load_dataset(args.data, args.image_size, cache_dir=args.cache_dir)  # noqa: E731
    if is_archive(args.data):  # unpack on its own first, to split the cold load into its parts
        tree = _timed("1a unpack archive", lambda: extract_archive(args.data, args.cache_dir))
    ds = _timed("1b first load (scan + decode + cache write)", load)
    ds = _timed("2  second load (cache read)", load)
    if is_archive(args.data) and (layout := find_layout(tree)) and layout[0] == "folders":
        # What a cache hit costs on top when --data names an unpacked folder: the key needs a scan.
        _timed("2b scan of the unpacked tree (folder cache key)", lambda: scan_tree(layout[1]))
    mean, std = _timed("3  channel_stats(train_x)", lambda: channel_stats(ds.train_x))
    print(f"source: {ds.source}; classes: {len(ds.classes)}")
    print(f"train_x {tuple(ds.train_x.shape)}  test_x {tuple(ds.test_x.shape)}  "
          f"({(ds.train_x.nbytes + ds.test_x.nbytes) / 2**20:.0f} MiB uint8)")
    print(f"cache: tensors {_mib(args.cache_dir / 'tensors'):.0f} MiB", end="")
    if (args.cache_dir / "extracted").exists():
        print(f", extracted {_mib(args.cache_dir / 'extracted'):.0f} MiB", end="")
    print(f"\nmean {[round(m, 4) for m in mean]}  std {[round(s, 4) for s in std]}")


if __name__ == "__main__":
    main()
