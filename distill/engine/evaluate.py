"""Rebuild a trained model from its checkpoint and score it on a data set's test split."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from distill.engine import checkpoint as ckpt_io
from distill.augment.ops import Preprocess, to_float
from distill.engine.loop import autocast, model_input
from distill.errors import UserError
from distill.models import build_model


def model_from_checkpoint(ck: dict, path, device: torch.device,
                          channels_last: bool = False) -> tuple[nn.Module, Preprocess]:
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
    from distill.data import load_dataset, make_splits, select_classes
    from distill.engine.checks import require_classes

    ck = ckpt_io.load_checkpoint(path)
    cfg = ck["config"]
    labels = {k: cfg[k] for k in ("dataset", "coarse_labels") if k in cfg}  # absent (older runs): CIFAR-10's
    ds = load_dataset(data or cfg.get("data"), ckpt_io.decode_size(ck), cache_dir, False, quiet=quiet, **labels)
    if cfg.get("classes") is not None:  # trained on some of the data's classes (--classes): tested on those
        ds = select_classes(ds, ck["classes"])
    require_classes(ck["classes"], ds.classes, path, "evaluate it on the data it was trained for")
    splits = make_splits(ds, 0, None, limit_test, cfg.get("seed", 0))
    model, pre = model_from_checkpoint(ck, path, device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    result = evaluate(model, pre, splits.test_x.to(device), splits.test_y.to(device), len(ds.classes),
                      batch_size=batch_size, tta=tta, amp_dtype=amp)
    return {"checkpoint": str(path), "arch": ck["spec"]["arch"], "role": ck.get("role"),
            "accuracy": result["accuracy"], "per_class": dict(zip(ds.classes, result["per_class"])),
            "test_images": len(splits.test_x), "dataset": ds.source, "tta": tta}


@torch.no_grad()
def predict(model: nn.Module, preprocess: Preprocess, x_u8: Tensor, batch_size: int, tta: bool,
            amp_dtype: torch.dtype | None, channels_last: bool) -> Tensor:
    """Float32 class probabilities (N, C) for uint8 images, batched; `tta` averages with the mirrored image."""
    model.eval()
    device = next(model.parameters()).device
    probs = []
    for start in range(0, len(x_u8), batch_size):
        x = to_float(x_u8[start:start + batch_size].to(device, non_blocking=True))
        with autocast(device, amp_dtype):
            p = model(model_input(x, preprocess, channels_last)).float().softmax(1)
            if tta:
                p = (p + model(model_input(x.flip(3), preprocess, channels_last)).float().softmax(1)) / 2
        probs.append(p)
    return torch.cat(probs) if probs else torch.zeros(0, 0, device=device)


def evaluate(model: nn.Module, preprocess: Preprocess, x_u8: Tensor, y: Tensor, num_classes: int,
             batch_size: int = 1024, tta: bool = False, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False) -> dict:
    """Accuracy and per-class accuracy (both 0..1) on a labelled uint8 set, and the probabilities (N, C)."""
    if len(x_u8) == 0:
        return {"accuracy": float("nan"), "per_class": [float("nan")] * num_classes, "probs": None}
    probs = predict(model, preprocess, x_u8, batch_size, tta, amp_dtype, channels_last)
    y = y.to(probs.device)
    hits = (probs.argmax(1) == y).float()
    per_class_hits = torch.zeros(num_classes, device=probs.device).index_add_(0, y, hits)
    per_class_n = torch.bincount(y, minlength=num_classes).clamp(min=1)
    return {"accuracy": hits.mean().item(), "per_class": (per_class_hits / per_class_n).tolist(), "probs": probs}
