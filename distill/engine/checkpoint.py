"""Checkpoints and predictions files: written atomically, read with weights_only=True, refused with one clear
line when broken.

A distill checkpoint is a plain dict of tensors, numbers, strings and lists, so a weights-only
`torch.load` reads it and nothing in it can run code. So is predictions.pt, whose layout is defined here
once: `predictions_record` (what distill.engine.results writes) and `read_predictions` (what
distill.experiments reads back).
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import torch

from distill import atomic
from distill.atomic import TEMP_SUFFIX, torch_writer
from distill.errors import UserError

FORMAT = "distill-checkpoint"
VERSION = 1
# Every run's per-image test results, beside metrics.json.
PREDICTIONS_FILE, PREDICTIONS_FORMAT, PREDICTIONS_VERSION = "predictions.pt", "distill-predictions", 1


def save_atomic(obj: object, path: Path) -> None:
    """torch.save `obj` to `path` atomically (see write_atomic)."""
    write_atomic(path, torch_writer(obj))


def write_text_atomic(text: str, path: Path) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode()))


def write_atomic(path: Path, write: Callable[[BinaryIO], object],
                 advice: str = "free disk space or choose another --out") -> None:
    """A run's file written atomically (distill.atomic); a failure is one line saying what to do."""
    path = Path(path)

    def failed(exc: OSError) -> UserError:
        return UserError(f"could not write {path} ({exc.strerror or exc}): {advice}; the previous {path.name}, "
                         f"if any, is untouched")

    atomic.write_atomic(path, write, failed)


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files of writes that were killed before their rename (never a complete file)."""
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def read_torch_file(path: Path) -> object:
    """torch.load with weights_only=True, turning every failure into one line that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found: check the path")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (an interrupted copy?): use another file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's advice on odd pickles would add lines to our one
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # The safe unpickler names what it refused; "Unsupported operand" means bytes that are no pickle.
        if "Weights only load failed" in text and "Unsupported operand" not in text:
            found = re.search(r"GLOBAL (\S+) was not", text)
            what = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"refused to load {path}: it holds pickled Python objects{what}, not only tensors, and loading it "
                f"could run code; use a checkpoint written by distill or a plain state_dict"
            ) from None
        raise UserError(f"{path} is not a PyTorch checkpoint (unreadable pickle): use another file") from None
    except Exception as exc:  # a torn zip or random bytes fail in many ways (even KeyError); all mean one thing
        raise UserError(
            f"{path} is truncated or corrupt ({first_line(exc)}): use another copy, e.g. best.pt or last.pt"
        ) from None


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (a ResNet50 checkpoint of ~280 MB: a fraction of a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:120] if lines else type(exc).__name__


# The checkpoint schema, written (the two functions below) and read (load_checkpoint, load_resumable) here.
# best.pt holds MODEL_KEYS: the weights and what explains them; last.pt adds TRAINING_KEYS, everything needed to
# continue. Of those, a reader needs REQUIRED_KEYS (evaluate, predict, export) or RESUME_KEYS (--resume; runs
# before 2026-12-04 lack the newer keys, which readers take as absent).
MODEL_KEYS = ("role", "spec", "model", "ema", "eval_weights", "config", "classes", "normalization", "epoch",
              "best_val", "teacher", "changes")
TRAINING_KEYS = ("method_state", "optimizer", "scheduler", "step_in_epoch", "rng", "ema_updates", "wall_seconds",
                 "train_images", "train_seconds", "first_epoch_images", "first_epoch_seconds")
REQUIRED_KEYS = ("spec", "model", "classes", "normalization", "config")
RESUME_KEYS = ("optimizer", "scheduler", "rng", "epoch", "step_in_epoch", "best_val", "eval_weights",
               "wall_seconds", "train_images", "train_seconds")


def model_checkpoint(**fields) -> dict:
    """best.pt: exactly MODEL_KEYS, with the format's name and version."""
    return {"format": FORMAT, "version": VERSION, **exactly(MODEL_KEYS, fields)}


def training_checkpoint(model: dict, **fields) -> dict:
    """last.pt: a model_checkpoint and exactly TRAINING_KEYS."""
    return {**model, **exactly(TRAINING_KEYS, fields)}


def exactly(keys: tuple[str, ...], fields: dict) -> dict:
    if set(fields) != set(keys):  # a programming error: a writer and the schema disagree
        raise ValueError(f"checkpoint fields {sorted(set(fields) ^ set(keys))} do not match the schema")
    return fields


def load_checkpoint(path: Path) -> dict:
    """Read a distill checkpoint, refusing foreign files (e.g. a plain torchvision state_dict)."""
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = " (it looks like a plain state_dict; use it with --weights FILE)" if looks_like_state_dict(ckpt) else ""
        raise UserError(f"{path} is not a distill checkpoint{hint}: pass last.pt or best.pt from a distill run")
    if ckpt.get("version", 0) > VERSION:
        raise UserError(f"{path} was written by a newer distill (format {ckpt['version']}): upgrade distill")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path} is an incomplete distill checkpoint (missing {', '.join(missing)}): use another file")
    check_metadata(ckpt, path)
    return ckpt


def load_resumable(path: Path) -> dict:
    """A distill checkpoint that holds everything needed to continue training (last.pt)."""
    ckpt = load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path} cannot be resumed: it holds weights but no training state ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''}; a copy of best.pt?): restore the run's own last.pt, "
                        f"or start over with --force")
    return ckpt


def check_metadata(ckpt: dict, path: Path) -> None:
    """The model spec, classes, normalization, settings and weights a checkpoint brings: hand-edited or damaged
    ones are refused in one line here, instead of failing somewhere inside model building or preprocessing."""
    problem = (metadata_problem(ckpt["spec"], ckpt["classes"], ckpt["normalization"]) or config_problem(ckpt["config"])
               or weights_problem(ckpt))
    if problem:
        raise UserError(f"{path} has damaged metadata ({problem}): use an unedited checkpoint written by distill")


def metadata_problem(spec: object, classes: object, norm: object) -> str | None:
    if not isinstance(spec, dict) or spec.get("family") not in ("teacher", "student"):
        return "its model spec has no family (teacher or student)"
    if not isinstance(spec.get("arch"), str):
        return "its model spec has no arch"
    if not (isinstance(spec.get("input_size"), int) and spec["input_size"] >= 8):
        return f"input size {spec.get('input_size')!r} is not an integer of at least 8"
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        return "its class names are not a list of at least 2 names"
    if spec.get("num_classes") != len(classes):
        return f"its model has {spec.get('num_classes')!r} outputs for {len(classes)} classes"
    if not _valid_normalization(norm):
        return "its normalization is not 3 finite means and 3 positive finite stds"
    return None


def config_problem(config: object) -> str | None:
    """The run's settings that evaluate, predict and export read back (the data, its decode size, the seed)."""
    if not isinstance(config, dict):
        return f"its config is {type(config).__name__}, not a table of settings"
    size = config.get("image_size")
    if size is not None and not (is_int(size) and size >= 8):
        return f"image size {size!r} is not an integer of at least 8"
    if not isinstance(config.get("data"), (str, type(None))):
        return f"its data {config['data']!r} is not a path"
    if not is_int(config.get("seed", 0)):
        return f"its seed {config['seed']!r} is not an integer"
    return None


def weights_problem(ckpt: dict) -> str | None:
    """The weights (and the EMA's, when there are any) must be a state_dict: names to tensors."""
    weights = {"model": ckpt["model"], **({"ema": ckpt["ema"]} if ckpt.get("ema") is not None else {})}
    for key, value in weights.items():
        if not looks_like_state_dict(value):
            return f"its {key!r} weights are {type(value).__name__}, not a state_dict of tensors"
    return None


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_size(ckpt: dict) -> int:
    """The side length the run's images were decoded to (--image-size); the model may resize them further."""
    return ckpt["config"].get("image_size", ckpt["spec"]["input_size"])


def _valid_normalization(norm: object) -> bool:
    if not isinstance(norm, dict):
        return False
    mean, std = norm.get("mean"), norm.get("std")
    numbers = lambda v: isinstance(v, list) and len(v) == 3 and all(  # noqa: E731
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    return numbers(mean) and numbers(std) and min(std) > 0


def looks_like_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def eval_state_dict(ckpt: dict) -> dict:
    """The weights that were evaluated (EMA or raw, whichever won on validation)."""
    return ckpt["ema"] if ckpt.get("eval_weights") == "ema" and ckpt.get("ema") is not None else ckpt["model"]


class PredictionsError(ValueError):
    """What is wrong with a predictions file, as the words that follow its name ("is unreadable")."""


def predictions_record(classes: list[str], labels: torch.Tensor, probs: torch.Tensor, tta: bool) -> dict:
    """predictions.pt: per test image its label, top-1 class and probabilities (float16: 2 bytes a class is
    plenty for agreement and KL)."""
    probs = probs.float().cpu()
    return {"format": PREDICTIONS_FORMAT, "version": PREDICTIONS_VERSION, "classes": classes,
            "labels": labels.cpu().long(), "top1": probs.argmax(1), "probs": probs.half(), "tta": tta}


def read_predictions(path: Path) -> dict:
    """A predictions file as `predictions_record` wrote it; PredictionsError says what is wrong with any other."""
    try:  # the one reader of torch files: weights_only, and every failure one line
        data = read_torch_file(path)
    except UserError:
        raise PredictionsError("is unreadable") from None
    problem = predictions_problem(data)
    if problem:
        raise PredictionsError(problem)
    return data


def predictions_problem(data: object) -> str | None:
    """What is wrong with a loaded predictions file, or None when it has predictions_record's layout."""
    if not isinstance(data, dict) or data.get("format") != PREDICTIONS_FORMAT:
        return "is not a distill predictions file"
    if not isinstance(data.get("version"), int) or data["version"] > PREDICTIONS_VERSION:
        return f"has an unknown version ({data.get('version')!r}): upgrade distill"
    labels, top1, probs = (data.get(k) for k in ("labels", "top1", "probs"))
    if not all(isinstance(t, torch.Tensor) for t in (labels, top1, probs)):
        return "lacks the labels, top1 or probs tensor"
    if labels.is_floating_point() or top1.is_floating_point() or not probs.is_floating_point():
        return "has tensors of the wrong type (labels and top1 hold classes, probs probabilities)"
    if labels.ndim != 1 or not len(labels) or top1.shape != labels.shape or probs.ndim != 2 \
            or probs.shape[0] != len(labels):
        return f"has mismatched shapes (labels {tuple(labels.shape)}, top1 {tuple(top1.shape)}, " \
               f"probs {tuple(probs.shape)})"
    return None
