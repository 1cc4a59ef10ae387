"""The finished runs `distill compare` reads: every folder holding a metrics.json (written last by `train_run`,
so it marks a finished run), each field checked so a hand-edited or foreign file cannot crash compare, and
each run's predictions.pt, read once.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import torch

from distill.data.files import special_kind
from distill.engine.checkpoint import PREDICTIONS_FILE, PredictionsError, read_predictions
from distill.errors import UserError

FIELDS = ("role", "arch", "method", "params", "gflops", "test_accuracy", "best_val_accuracy", "epochs",
          "wall_seconds", "train_images_per_second")
ROLE_RANK = {"teacher": 0, "baseline": 1, "student": 2}  # a baseline sits right above its students


@dataclass(eq=False)
class FinishedRun:
    """A run folder with its metrics.json, and the runs compare links it to (not the engine's run state)."""
    folder: Path
    row: dict  # what --json prints for this run
    metrics: dict  # the whole metrics.json
    baseline: FinishedRun | None = None
    teacher: FinishedRun | None = None

    @property
    def name(self) -> str:
        return self.row["name"]

    @property
    def accuracy(self) -> float | None:
        return self.row["test_accuracy"]


def find_runs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder that holds your runs, e.g. runs/cifar10")
    # os.walk does not follow symlinked folders, so a link loop cannot make this run forever.
    found = sorted(Path(folder) for folder, _, files in os.walk(root) if "metrics.json" in files)
    if not found:
        raise UserError(f"no runs (folders with metrics.json) under {root}: "
                        f"train some with distill teach/student or distill pipeline")
    return found


def finite(value):
    """NaN (e.g. no validation set) becomes None: JSON has no NaN and the table shows '-'."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class Skipped(Exception):
    """A run compare cannot use (its metrics.json unreadable or with a field out of place): one note, and the
    other runs are compared."""


def read_regular(path: Path, limit: int, follow_symlinks: bool = True) -> bytes:
    """The first `limit` bytes of a regular file. Opened non-blocking, so a FIFO cannot hang compare, and checked
    on the open file, so nothing swapped in after a check is read; a device behind a link is never read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0)))
    with open(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Skipped(f"{path} is {special_kind(mode) or 'a folder'}, not a regular file")
        return fh.read(limit)


class Rule(NamedTuple):
    """What a metrics.json field must be: one of `kinds` (bool never counts as a number), within [low, high]
    for numbers. NaN means unknown where a float is allowed (no validation set: no best validation accuracy)."""
    kinds: tuple[type, ...]
    what: str
    low: float = -sys.float_info.max
    high: float = sys.float_info.max  # so inf is refused: no field compare reads may be infinite


TEXT = Rule((str,), "text")
FRACTION = Rule((int, float), "a fraction from 0 to 1", 0, 1)
AMOUNT = Rule((int, float), "a number >= 0", 0)
COUNT = Rule((int,), "a whole number from 0 to 10^15", 0, 10 ** 15)
EVERY = "*"  # a nested rule for every key of an object (per-class accuracy: one per class name)
# Every field of metrics.json that compare reads, so a hand-edited or foreign file cannot crash it.
METRICS_RULES: dict = {
    "role": TEXT, "arch": TEXT, "method": TEXT, "params": COUNT, "gflops": AMOUNT, "test_accuracy": FRACTION,
    "best_val_accuracy": FRACTION, "epochs": COUNT, "wall_seconds": AMOUNT, "train_images_per_second": AMOUNT,
    "seed": Rule((int,), "a seed from 0 to 2^31 - 1", 0, 2 ** 31 - 1),
    "test_images": Rule((int,), "a whole number from 1 to 10^15", 1, 10 ** 15),
    "teacher": {"path": TEXT, "arch": TEXT, "test_accuracy": FRACTION},
    "per_class_accuracy": {EVERY: FRACTION},
}
METRICS_MAX_BYTES = 1 << 20  # a run's metrics.json takes a few KB (per-class accuracy of 1000 classes: ~40 KB)


def json_text(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def rule_problem(value: object, rule: Rule) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value) and float in rule.kinds):
        return None  # missing or unknown: shown as "-"
    fits = isinstance(value, rule.kinds) and not isinstance(value, bool)
    if fits and rule.kinds != TEXT.kinds:
        fits = rule.low <= value <= rule.high  # exact for ints of any size: no float conversion
    return None if fits else f"is {json_text(value)}, not {rule.what}"


def field_problems(name: str, value: object, rule: Rule | dict) -> Iterator[str]:
    """'<field> is <value>, not <what it must be>' for each field (nested ones as teacher.path) out of place."""
    if isinstance(rule, Rule):
        problem = rule_problem(value, rule)
        yield from [f"{name} {problem}"] if problem else []
    elif value is not None and not isinstance(value, dict):
        yield f"{name} is {json_text(value)}, not an object"
    elif value is not None:
        for key, inner in rule.items():
            for k, v in (value.items() if key == EVERY else [(key, value.get(key))]):
                yield from field_problems(f"{name}.{k}", v, inner)


def read_metrics(path: Path) -> dict:
    try:
        text = read_regular(path, METRICS_MAX_BYTES + 1)
        if len(text) > METRICS_MAX_BYTES:
            raise Skipped(f"{path} is over {METRICS_MAX_BYTES >> 20} MiB, far more than a run's metrics take")
        metrics = json.loads(text)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = (exc.strerror or exc) if isinstance(exc, OSError) else exc  # no errno and path twice
        raise Skipped(f"cannot read {path} ({reason})") from None
    if not isinstance(metrics, dict):
        raise Skipped(f"cannot read {path} (a JSON {type(metrics).__name__}, not an object)")
    problem = next((p for key, rule in METRICS_RULES.items() for p in field_problems(key, metrics.get(key), rule)),
                   None)
    if problem:
        raise Skipped(f"{path}: {problem}")
    return metrics


def read_run(folder: Path, root: Path) -> FinishedRun:
    metrics = read_metrics(folder / "metrics.json")
    name = folder.relative_to(root).as_posix()
    row = {"name": folder.name if name == "." else name, "path": str(folder)}
    row |= {key: finite(metrics.get(key)) for key in FIELDS}
    row["seed"] = metrics.get("seed")
    return FinishedRun(folder, row, metrics)


def read_runs(root: Path) -> tuple[list[FinishedRun], dict[str, str]]:
    """Every readable run under root, and {metrics.json path: why} for each one that is not. None readable
    is an error."""
    runs, skipped = [], {}
    for folder in find_runs(root):
        try:
            runs.append(read_run(folder, root))
        except Skipped as why:
            skipped[str(folder / "metrics.json")] = str(why)
    if not runs:
        more = f" (and {len(skipped) - 1} more runs); delete or rerun those runs" if len(skipped) > 1 else \
            "; delete or rerun that run"
        raise UserError(f"no run under {root} can be compared: {next(iter(skipped.values()))}{more}")
    return runs, skipped


# ----------------------------------------------------------------------------------------------------------
# Experiments: the runs of one folder, trained with one recipe and one data set.

def experiment(row: dict) -> str:
    return str(Path(row["path"]).parent)


def shown_experiment(row: dict, root: Path) -> str:
    """The experiment folder as the user would type it: under the given root, else its full path."""
    folder = Path(row["path"]).parent
    try:
        return (Path(root) / folder.relative_to(root)).as_posix()
    except ValueError:  # the root is itself a run: its experiment is the folder above
        return folder.as_posix()


def same_experiment(runs: list[FinishedRun], run: FinishedRun, role: str) -> list[FinishedRun]:
    return [r for r in runs if r.row["role"] == role and r.folder.parent == run.folder.parent]


def sort_key(row: dict) -> tuple:
    """Per experiment: the teacher first, then by arch, each baseline before its students."""
    role = row["role"] or ""
    return (experiment(row), role != "teacher", row["arch"] or "", ROLE_RANK.get(role, 3), row["method"] or "",
            row["name"])


# ----------------------------------------------------------------------------------------------------------
# predictions.pt: read once per run, and only where it is the run's own.

class Predictions:
    """Each run's predictions.pt, read once; a broken one is reported once (in `notes`) and treated as missing."""

    def __init__(self, notes: list[str]):
        self.notes = notes
        self.loaded: dict[Path, dict | None] = {}

    def of(self, run: FinishedRun) -> dict | None:
        if run.folder not in self.loaded:
            self.loaded[run.folder] = self.read(run)
        return self.loaded[run.folder]

    def read(self, run: FinishedRun) -> dict | None:
        path = run.folder / PREDICTIONS_FILE
        if not path.is_file():
            return None  # an older run: no paired statistics, and nothing to report
        try:
            data = read_predictions(path)
        except PredictionsError as why:
            data, problem = None, str(why)
        else:
            problem = accuracy_mismatch(data, run.accuracy)
        if problem:
            self.notes.append(f"{run.name}: {PREDICTIONS_FILE} {problem}; treated as missing")
            return None
        return data

    def pair(self, run: FinishedRun, other: FinishedRun, lost: str) -> tuple[dict, dict] | None:
        """Both runs' predictions when both exist and are on the same test images, in the same order."""
        mine, theirs = self.of(run), self.of(other)
        if mine is None or theirs is None:
            return None
        if not torch.equal(mine["labels"], theirs["labels"]) or mine["probs"].shape != theirs["probs"].shape:
            self.notes.append(f"{run.name}: its test labels differ from {other.name}'s (another test split?); {lost}")
            return None
        return mine, theirs


def accuracy_mismatch(data: dict, accuracy: float | None) -> str | None:
    """Where the predictions' accuracy is not metrics.json's (by a whole image or more), they are another run's:
    their interval would not hold the gain metrics.json gives."""
    right = (data["top1"] == data["labels"]).double().mean().item()
    if accuracy is None or abs(right - accuracy) < 0.5 / len(data["labels"]):
        return None
    return f"gives {100 * right:.2f}% test accuracy, metrics.json {100 * accuracy:.2f}% (another run's file?)"
