"""Rebuild a trained model from its checkpoint and score it on a data set's test split."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from distill import checkpoint as ckpt_io
from distill.augment import Preprocess
from distill.errors import UserError
from distill.models import build_model


def model_from_checkpoint(ck: dict, path, device: torch.device, channels_last: bool = False) -> tuple[nn.Module, Preprocess]:
    """The evaluated weights of a checkpoint, in eval mode, with the preprocessing it was trained with."""
    model = build_model(ck["spec"])
    try:
        model.load_state_dict(ckpt_io.eval_state_dict(ck))
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit its own model spec ({ckpt_io.first_line(exc)}): "
                        f"the file is damaged; use another checkpoint") from None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).eval().requires_grad_(False)
    norm = ck["normalization"]
    return model, Preprocess(norm["mean"], norm["std"], ck["spec"]["input_size"]).to(device)


def evaluate_checkpoint(path: Path, data: str | None, limit_test: int | None, tta: bool, device: torch.device,
                        cache_dir: Path | None = None, batch_size: int = 1024, quiet: bool = False) -> dict:
    from distill.data import load_dataset, make_splits
    from distill.train import evaluate

    ck = ckpt_io.load_checkpoint(path)
    cfg = ck["config"]
    ds = load_dataset(data or cfg.get("data"), ckpt_io.decode_size(ck), cache_dir, False, quiet=quiet)
    if ds.classes != ck["classes"]:
        raise UserError(f"{path} was trained on classes {ck['classes']} but the data has {ds.classes}: "
                        f"evaluate it on the data it was trained for")
    splits = make_splits(ds, 0, None, limit_test, cfg.get("seed", 0))
    model, pre = model_from_checkpoint(ck, path, device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    result = evaluate(model, pre, splits.test_x.to(device), splits.test_y.to(device), len(ds.classes),
                      batch_size=batch_size, tta=tta, amp_dtype=amp)
    return {"checkpoint": str(path), "arch": ck["spec"]["arch"], "role": ck.get("role"),
            "accuracy": result["accuracy"], "per_class": dict(zip(ds.classes, result["per_class"])),
            "test_images": len(splits.test_x), "dataset": ds.source, "tta": tta}
