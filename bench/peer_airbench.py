#!/usr/bin/env python3
"""The peer reference (issue 16): airbench94, the best-known fast CIFAR-10 recipe, on our data and card.

    python bench/peer_airbench.py --data .data/cifar10-jpeg.tar.gz --runs 2 --json airbench.json   # GPU
    python bench/peer_airbench.py --data PATH --check --json airbench.json                          # CPU: no training

airbench (PyPI `airbench==0.1.8`, Keller Jordan; 94.01% mean on the official CIFAR-10 in its own n=1000
runs) reads `cifar10/train.pt` and `cifar10/test.pt` relative to the current folder (its test loader's path
is hard-coded), each a dict of uint8 images (N, 32, 32, 3), int64 labels and the class names. This script
decodes our copy with distill's own loader (the same cache the pipeline reads), writes it in that format
into a temporary folder, changes into it, runs `airbench.warmup94()` (cuDNN's autotuning, as airbench's
README does first) and then `airbench.train94()` --runs times, and scores each run with airbench's own
evaluation (`airbench.evaluate`, TTA level 2: mirror + translate, as airbench reports). How far the peer
gets on this copy tells how much the JPEG copy itself costs, next to our teacher on the same images.

Seconds per run: wall clock around train94 between two CUDA syncs (the whitening init and the training,
as airbench's own timer counts, plus loading its test file; train94 runs with verbose=False, so it skips
its per-epoch evaluations). airbench needs CUDA (it times with CUDA events and builds its net with .cuda()):
without it the script says so in one line; --check does everything but the training (decode, convert, and
read the files back through airbench's own CifarLoader on the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distill.errors import UserError  # noqa: E402  (torch-free)

AIRBENCH = "airbench==0.1.8"
NO_AIRBENCH = f"airbench is not installed: pip install {AIRBENCH} (the GPU machine: the wheel bash bench/wheels.sh builds)"
NO_CUDA = ("airbench trains on a CUDA GPU only (CUDA events, .cuda() nets): run this on the GPU machine, "
           "or add --check to test the data conversion here")


def convert(ds, folder: Path) -> Path:
    """Our decoded data in airbench's format: folder/cifar10/{train,test}.pt, each a dict of uint8 images
    (N, H, W, 3), 0-255 (airbench permutes them to channels-first itself), int64 labels and the class names."""
    from distill.engine.checkpoint import save_atomic

    root = folder / "cifar10"
    root.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        save_atomic({"images": x.permute(0, 2, 3, 1).contiguous(), "labels": y.long(), "classes": list(ds.classes)},
                    root / f"{split}.pt")
    return root


def check_fits(ds) -> None:
    """airbench94's net ends in 10 outputs and its crop and TTA assume 32x32 images."""
    if len(ds.classes) != 10:
        raise UserError(f"airbench94's network has 10 outputs, but {ds.source} has {len(ds.classes)} classes: "
                        f"give it a CIFAR-10 copy")
    if tuple(ds.train_x.shape[1:]) != (3, 32, 32):
        raise UserError(f"airbench94 trains on 32x32 images; {ds.source} decodes to {tuple(ds.train_x.shape[1:])}")


def import_airbench():
    try:
        import airbench
    except ImportError:
        raise UserError(NO_AIRBENCH) from None
    return airbench


def airbench_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("airbench")
    except metadata.PackageNotFoundError:
        return None


def read_back(airbench, ds) -> dict:
    """--check: airbench's own CifarLoader reads the converted files (on the CPU) and sees our data."""
    import torch

    counts = {}
    for train, x, y in ((True, ds.train_x, ds.train_y), (False, ds.test_x, ds.test_y)):
        loader = airbench.CifarLoader("cifar10", train=train, batch_size=1000, gpu="cpu")
        if loader.images.shape != (len(x), 3, 32, 32) or not torch.equal(loader.labels, y.long()):
            raise UserError(f"airbench read back {tuple(loader.images.shape)} images from the converted "
                            f"{'train' if train else 'test'}.pt, not our {len(x)}: the conversion is wrong")
        counts["train_images" if train else "test_images"] = len(x)
    return counts


def train_runs(airbench, runs: int) -> list[dict]:
    """warmup94, then train94 `runs` times, each scored with airbench's own TTA evaluation."""
    import torch
    from airbench.lib_airbench94 import hyp

    airbench.warmup94()
    test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    results = []
    for run in range(runs):
        train_loader = airbench.CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"],
                                            aug=hyp["aug"], altflip=True)  # as train94 builds it
        torch.cuda.synchronize()
        start = time.perf_counter()
        model = airbench.train94(train_loader, verbose=False)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        accuracy = airbench.evaluate(model, test_loader, tta_level=hyp["net"]["tta_level"])
        results.append({"run": run, "test_accuracy": accuracy, "seconds": round(seconds, 3)})
        print(f"airbench94 run {run + 1}/{runs}: test accuracy {100 * accuracy:.2f}% in {seconds:.2f} s", flush=True)
    return results


def report(data: str, ds, runs: list[dict], device: str, check: bool) -> dict:
    import torch

    accuracies = [r["test_accuracy"] for r in runs]
    return {"peer": "airbench94", "package": AIRBENCH, "airbench_version": airbench_version(), "check_only": check,
            "data": data, "dataset": ds.source, "train_images": len(ds.train_x), "test_images": len(ds.test_x),
            "device": device, "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "evaluation": "airbench.evaluate, tta_level 2 (mirror + translate)", "runs": runs,
            "mean_test_accuracy": sum(accuracies) / len(accuracies) if accuracies else None,
            "mean_seconds": sum(r["seconds"] for r in runs) / len(runs) if runs else None}


def measure(args: argparse.Namespace) -> dict:
    import torch

    from distill.data import load_dataset

    if not args.check and not torch.cuda.is_available():
        raise UserError(NO_CUDA)
    airbench = import_airbench()
    ds = load_dataset(args.data, 32, Path(args.cache_dir) if args.cache_dir else None, quiet=True)
    check_fits(ds)
    work = Path(tempfile.mkdtemp(prefix="distill-airbench-"))
    home = Path.cwd()
    try:
        convert(ds, work)
        os.chdir(work)  # airbench's loaders read ./cifar10/
        if args.check:
            read_back(airbench, ds)
            return report(args.data, ds, [], "cpu (check only)", True)
        return report(args.data, ds, train_runs(airbench, args.runs), torch.cuda.get_device_name(), False)
    finally:
        os.chdir(home)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/peer_airbench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the CIFAR-10 copy (any path distill reads)")
    ap.add_argument("--runs", type=int, default=2, help="train94 runs after the warm-up (default 2)")
    ap.add_argument("--json", type=Path, default=None, help="write the result here (else stdout)")
    ap.add_argument("--cache-dir", default=None, help="distill's decode cache (default $DISTILL_CACHE)")
    ap.add_argument("--check", action="store_true", help="no training: decode, convert, read back through airbench")
    args = ap.parse_args(argv)
    try:
        if args.runs < 1:
            raise UserError(f"--runs {args.runs}: give at least 1")
        if not Path(args.data).exists():
            raise UserError(f"--data {args.data} does not exist: give the CIFAR-10 copy, e.g. .data/cifar10-jpeg.tar.gz")
        result = measure(args)
        text = json.dumps(result, indent=2)
        if args.json:
            from distill.atomic import write_atomic

            write_atomic(args.json, lambda fh: fh.write(text.encode()),
                         lambda err: UserError(f"cannot write {args.json} ({err.strerror}): choose another --json"))
        else:
            print(text)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
