"""`distill compare`: every finished run under a folder side by side, with the uncertainty of each gain.

A run is any folder holding a metrics.json (written last by `train_run`, so it marks a finished run).
Where runs also hold predictions.pt (per-image predictions on the test set), each student is compared
with its baseline image by image (the gain's 95% interval and McNemar's exact test) and with its
teacher (top-1 agreement and KL(teacher || student)); runs that differ only in their seed are
aggregated (mean +- sd, paired t-test across seeds). The output is a table (or JSON), PNG charts beside
the runs and the same charts plus a markdown summary in TensorBoard, in an event file of compare's own.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import stat
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.segment import Segment, Segments
from rich.table import Table

from distill import stats
from distill.text import minutes, percent
from distill.experiments.chart import Point, Series, accuracy_per_run, accuracy_vs_params, per_class
from distill.engine.checkpoint import PREDICTIONS_FILE, PredictionsError, read_predictions, write_atomic
from distill.data.files import special_kind
from distill.errors import UserError

FIELDS = ("role", "arch", "method", "params", "gflops", "test_accuracy", "best_val_accuracy", "epochs",
          "wall_seconds", "train_images_per_second")
ROLE_RANK = {"teacher": 0, "baseline": 1, "student": 2}  # a baseline sits right above its students
CHART_FILE = "compare.png"
EVENTS_SUFFIX = ".distill-compare"  # marks compare's own event files: the only ones it ever deletes
CHART_TAG = "compare/accuracy_vs_params"
SUMMARY_TAG = "compare/summary"
SIGNIFICANCE = 0.05


@dataclass(eq=False)
class Run:
    folder: Path
    row: dict  # what --json prints for this run
    metrics: dict  # the whole metrics.json
    baseline: Run | None = None
    teacher: Run | None = None

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


def read_run(folder: Path, root: Path) -> Run:
    metrics = read_metrics(folder / "metrics.json")
    name = folder.relative_to(root).as_posix()
    row = {"name": folder.name if name == "." else name, "path": str(folder)}
    row |= {key: finite(metrics.get(key)) for key in FIELDS}
    row["seed"] = metrics.get("seed")
    return Run(folder, row, metrics)


def read_runs(root: Path) -> tuple[list[Run], dict[str, str]]:
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


def experiment(row: dict) -> str:
    return str(Path(row["path"]).parent)


def sort_key(row: dict) -> tuple:
    """Per experiment: the teacher first, then by arch, each baseline before its students."""
    role = row["role"] or ""
    return (experiment(row), role != "teacher", row["arch"] or "", ROLE_RANK.get(role, 3), row["method"] or "",
            row["name"])


def same_experiment(runs: list[Run], run: Run, role: str) -> list[Run]:
    return [r for r in runs if r.row["role"] == role and r.folder.parent == run.folder.parent]


def find_baseline(run: Run, runs: list[Run]) -> Run | None:
    """The baseline of the same arch in the same experiment folder (runs of another experiment may use
    another recipe or data), of the same seed where there is one; else the arch's only baseline."""
    candidates = [b for b in same_experiment(runs, run, "baseline") if b.row["arch"] == run.row["arch"]]
    same_seed = [b for b in candidates if b.row["seed"] == run.row["seed"]]
    for found in (same_seed, candidates):
        if len(found) == 1:
            return found[0]
    return None


def find_teacher(run: Run, runs: list[Run]) -> Run | None:
    """The teacher run in the student's experiment whose folder holds the checkpoint it was distilled from
    (by resolved path, then by folder name: the path may be relative to another working folder), else the
    experiment's only teacher if its arch fits. Baselines are measured against the only teacher too."""
    teachers = same_experiment(runs, run, "teacher")
    given = run.metrics.get("teacher") or {}
    if given.get("path"):
        folder = Path(given["path"]).parent
        try:
            target = folder.resolve()
        except (OSError, ValueError):  # a NUL byte in the path, say: it names no folder here
            target = None
        for match in (lambda t: t.folder.resolve() == target, lambda t: t.folder.name == folder.name):
            found = [t for t in teachers if match(t)]
            if len(found) == 1:
                return found[0]
    arch = given.get("arch")
    if len(teachers) == 1 and arch in (None, teachers[0].row["arch"]):
        return teachers[0]
    return None


class Predictions:
    """Each run's predictions.pt, read once; a broken one is reported once (in `notes`) and treated as missing."""

    def __init__(self, notes: list[str]):
        self.notes = notes
        self.loaded: dict[Path, dict | None] = {}

    def of(self, run: Run) -> dict | None:
        if run.folder not in self.loaded:
            self.loaded[run.folder] = self.read(run)
        return self.loaded[run.folder]

    def read(self, run: Run) -> dict | None:
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

    def pair(self, run: Run, other: Run, lost: str) -> tuple[dict, dict] | None:
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


def add_gain(run: Run, store: Predictions) -> None:
    """Gain over the baseline in points; with both runs' predictions, its 95% interval and McNemar's p."""
    row, base = run.row, run.baseline
    row |= {"gain_over_baseline": None, "gain_interval": None, "mcnemar_p": None, "baseline_run": None}
    if base is None or run.accuracy is None or base.accuracy is None:
        return
    row["baseline_run"] = base.name
    row["gain_over_baseline"] = round(100 * (run.accuracy - base.accuracy), 4)
    pair = store.pair(run, base, "no interval or p for its gain")
    if pair is None:
        return
    gain, row["mcnemar_p"] = stats.paired_comparison(*((p["top1"] == p["labels"]) for p in pair))
    if gain.low is not None:
        row["gain_interval"] = [round(gain.low, 4), round(gain.high, 4)]


def add_fidelity(run: Run, store: Predictions) -> None:
    """Top-1 agreement with the teacher and mean KL(teacher || student) on the test images."""
    row, teacher = run.row, run.teacher
    row |= {"teacher_agreement": None, "teacher_kl": None, "teacher_run": teacher.name if teacher else None}
    pair = store.pair(run, teacher, "no agreement or KL") if teacher else None
    if pair is not None:
        mine, theirs = pair
        row["teacher_agreement"] = stats.agreement(mine["top1"], theirs["top1"])
        row["teacher_kl"] = finite(stats.mean_kl(theirs["probs"], mine["probs"]))  # NaN probabilities: no KL


def link_runs(runs: list[Run], store: Predictions) -> None:
    for run in runs:
        role = run.row["role"]
        run.baseline = find_baseline(run, runs) if role == "student" else None
        run.teacher = find_teacher(run, runs) if role in ("student", "baseline") else None
        add_gain(run, store)
        add_fidelity(run, store)


def weak_teacher_notes(runs: list[Run]) -> list[str]:
    """A note per teacher that tests below the baseline of students it taught (below the student itself where
    there is no baseline), the students it concerns named in front. The teacher's accuracy is the one the
    student recorded (on its own test split), else its run's."""
    students: dict[str, list[str]] = defaultdict(list)
    for run in (r for r in runs if r.row["role"] == "student"):
        given = run.metrics.get("teacher") or {}
        accuracy = finite(given.get("test_accuracy"))
        accuracy = run.teacher.accuracy if accuracy is None and run.teacher else accuracy
        teacher = f"the teacher {run.teacher.name if run.teacher else given.get('path')}"
        base = run.baseline if run.baseline and run.baseline.accuracy is not None else None
        reference = (base.name, base.accuracy) if base else (f"{run.name} itself", run.accuracy)
        sentence = stats.weak_teacher(teacher, accuracy, *reference)
        if sentence:
            students[sentence].append(run.name)
    return [f"{', '.join(names)}: {sentence}" for sentence, names in students.items()]


def seed_groups(runs: list[Run], notes: list[str]) -> list[list[Run]]:
    """Runs of one experiment, role, arch and method with two or more seeds, one run per seed."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.row["seed"] is not None and run.accuracy is not None:
            r = run.row
            groups[(experiment(r), r["role"], r["arch"], r["method"])].append(run)
    kept = []
    for members in groups.values():
        seeds = [m.row["seed"] for m in members]
        if len(set(seeds)) != len(seeds):  # e.g. two temperatures of one method: not repeats of one recipe
            notes.append(f"{', '.join(m.name for m in members)}: a seed repeats; not aggregated over seeds")
        elif len(seeds) > 1:
            kept.append(sorted(members, key=lambda m: m.row["seed"]))
    return kept


def aggregate(members: list[Run], root: Path) -> dict:
    """Mean +- sd of test accuracy over seeds; for students also of the gain over the same-seed baseline,
    and the paired t-test of student against baseline accuracies (one pair per seed)."""
    first = members[0].row
    mean, std = stats.mean_std([m.accuracy for m in members])
    pairs = [(m.accuracy, m.baseline.accuracy) for m in members
             if m.baseline is not None and m.baseline.row["seed"] == m.row["seed"] and m.baseline.accuracy is not None]
    entry = {"experiment": shown_experiment(first, root), "role": first["role"], "arch": first["arch"],
             "method": first["method"], "seeds": [m.row["seed"] for m in members],
             "runs": [m.name for m in members], "test_accuracy_mean": mean, "test_accuracy_std": std,
             "gain_mean": None, "gain_std": None, "paired_seeds": len(pairs), "t": None, "p": None, "df": None}
    if pairs:
        gain_mean, gain_std = stats.mean_std([100 * (s - b) for s, b in pairs])
        t, p, df = stats.paired_t_test([s for s, _ in pairs], [b for _, b in pairs])
        entry |= {"gain_mean": gain_mean, "gain_std": gain_std, "t": finite(t), "p": p, "df": df}  # JSON has no inf
    return entry


def shown_experiment(row: dict, root: Path) -> str:
    """The experiment folder as the user would type it: under the given root, else its full path."""
    folder = Path(row["path"]).parent
    try:
        return (Path(root) / folder.relative_to(root)).as_posix()
    except ValueError:  # the root is itself a run: its experiment is the folder above
        return folder.as_posix()


def compare(root: Path) -> dict:
    """All runs under `root` with their gains, fidelity and seed aggregates; writes the charts.

    Returns {"runs": [...], "aggregates": [...], "notes": [...], "skipped": [metrics.json paths], "chart":
    compare.png, "charts": [...], "tensorboard": folder or None, "root": root}."""
    root = Path(root)
    runs, skipped = read_runs(root)
    runs.sort(key=lambda r: sort_key(r.row))
    notes = [f"{why}; that run is skipped" for why in skipped.values()]
    link_runs(runs, Predictions(notes))
    notes += weak_teacher_notes(runs)
    groups = seed_groups(runs, notes)
    result = {"runs": [r.row for r in runs], "aggregates": [aggregate(group, root) for group in groups],
              "notes": notes, "skipped": list(skipped), "root": str(root)}
    return result | write_charts(runs, groups, result, root)


# ----------------------------------------------------------------------------------------------------------
# Charts: PNG files beside the runs and the same images plus a markdown summary in TensorBoard.

ACCURACY_FILE, ACCURACY_TAG = "compare_accuracy.png", "compare/test_accuracy"


def chart_label(row: dict) -> str:
    """Short, and the same on every chart: the arch, then the method of a student or the role of another run
    (resnet8 kd, resnet8 baseline, resnet20 teacher)."""
    parts = (row["arch"], row["method"] if row["role"] == "student" else row["role"])
    return " ".join(str(p) for p in parts if p)


def params_points(runs: list[Run], groups: list[list[Run]]) -> list[Point]:
    """A point per run; the seeds of one recipe side by side, labelled once with their mean."""
    points = {run: Point(f"{chart_label(run.row)} {100 * run.accuracy:.1f}%", run.row["params"],
                         100 * run.accuracy, run.row["role"] or "?")
              for run in runs if run.accuracy is not None and run.row["params"]}
    for run, point in points.items():
        point.baseline = points.get(run.baseline)
        if point.baseline is not None and run.row["gain_interval"]:
            # The gain's interval around the baseline's accuracy: the whisker misses the baseline's dot
            # exactly when the interval excludes 0.
            low, high = (point.baseline.accuracy + g for g in run.row["gain_interval"])
            # The interval holds the gain; rounded to 4 decimals, a zero-width one may miss it by 1e-5.
            point.interval = (min(low, point.accuracy), max(high, point.accuracy))
    for group in groups:
        members = [m for m in group if m in points]
        for index, member in enumerate(members):
            points[member].slot = (index, len(members))
            points[member].label = ""
        if members:
            mean = sum(points[m].accuracy for m in members) / len(members)
            # On the rightmost of them: the others' whiskers stand left of it.
            points[members[-1]].label = f"{chart_label(members[0].row)} {mean:.1f}% ({len(members)} seeds)"
    return list(points.values())


def accuracy_points(runs: list[Run]) -> list[Point]:
    points = []
    for run in runs:
        n = run.metrics.get("test_images")
        if run.accuracy is not None:
            interval = tuple(100 * v for v in stats.wilson_interval(run.accuracy, n)) if n else None
            points.append(Point(run.name, run.row["params"] or 0, 100 * run.accuracy, run.row["role"] or "?",
                                interval))
    return points


def per_class_of(run: Run) -> dict:
    found = run.metrics.get("per_class_accuracy")
    return found if isinstance(found, dict) else {}


def mean_per_class(members: list[Run], classes: list[str]) -> list[float]:
    """Percent per class, averaged over the members (the seeds of one recipe); NaN where unknown."""
    def percent(value) -> float:
        return 100 * value if isinstance(value, (int, float)) else math.nan

    columns = zip(*([percent(per_class_of(m).get(c)) for c in classes] for m in members))
    return [sum(column) / len(members) for column in columns]


def per_class_series(students: list[Run], runs: list[Run], classes: list[str]) -> list[Series]:
    """Teacher, baseline and each student method of one arch (the mean of its seeds where there are several)."""
    teacher = students[0].teacher
    arch = students[0].row["arch"]
    groups = [([teacher], chart_label(teacher.row), "teacher")] if teacher and per_class_of(teacher) else []
    baselines = [b for b in same_experiment(runs, students[0], "baseline") if b.row["arch"] == arch and per_class_of(b)]
    groups += [(baselines, chart_label(baselines[0].row), "baseline")] if baselines else []
    by_method: dict[str, list[Run]] = defaultdict(list)
    for student in students:
        by_method[str(student.row["method"])].append(student)
    groups += [(members, chart_label(members[0].row), "student") for members in by_method.values()]
    return [Series(label + (f" ({len(members)} seeds)" if len(members) > 1 else ""), role,
                   mean_per_class(members, classes)) for members, label, role in groups]


def per_class_charts(runs: list[Run], root: Path) -> list[tuple[str, str, object]]:
    """(tag, file name, image) for each student arch of each experiment whose runs have per-class accuracy."""
    groups: dict[tuple[Path, str], list[Run]] = defaultdict(list)
    for run in runs:
        if run.row["role"] == "student" and per_class_of(run):
            groups[(run.folder.parent, str(run.row["arch"]))].append(run)
    charts = []
    for (folder, arch), students in groups.items():
        try:
            parts = folder.relative_to(root).parts
        except ValueError:  # the root is itself a run
            parts = ()
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join((*parts, arch)))
        classes = list(per_class_of(students[0]))
        series = per_class_series(students, runs, classes)
        who = f"{arch} runs" + (" and teacher" if series[0].role == "teacher" else "")  # what it plots
        image = per_class(classes, series, f"per-class test accuracy: {' / '.join((*parts[-1:], who))}")
        charts.append((f"compare/per_class/{slug}", f"compare_per_class_{slug}.png", image))
    return charts


# Every chart compare writes carries this PNG text chunk: the only files of a chart's name it ever replaces.
CHART_MARK = ("Software", "distill compare")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_png(path: Path, image) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(*CHART_MARK)
    write_atomic(path, lambda fh: Image.fromarray(image).save(fh, format="PNG", pnginfo=info),
                 advice="make the folder writable, or compare a writable copy of it")


def free_or_mine(path: Path) -> bool:
    """Whether compare may write a chart to `path`: nothing is there, or a chart it wrote itself (the mark
    sits right after the PNG header). A user's file, a link, a folder or a FIFO of that name is kept."""
    try:
        head = read_regular(path, 4096, follow_symlinks=False)
    except FileNotFoundError:
        return True
    except (OSError, Skipped):
        return False
    key, text = CHART_MARK
    return head.startswith(PNG_SIGNATURE) and b"tEXt" + f"{key}\0{text}".encode() in head


def chart_name(root: Path, name: str) -> str:
    """`name`, or where it is taken by a file compare did not write, <stem>.distill.png (-2, -3, ...)."""
    stem = name.removesuffix(".png")
    for candidate in (name, f"{stem}.distill.png", *(f"{stem}.distill-{i}.png" for i in range(2, 10))):
        if free_or_mine(root / candidate):
            return candidate
    raise UserError(f"{name} and {stem}.distill*.png in {root} are files compare did not write; it keeps them")


def moved_note(moved: list[tuple[str, str]], root: Path) -> str:
    one = len(moved) == 1
    return (f"{', '.join(old for old, _ in moved)} in {root} {'is not a chart' if one else 'are not charts'} "
            f"of distill compare, left as {'it is' if one else 'they are'}: compare's "
            f"chart{'' if one else 's'} went to {', '.join(new for _, new in moved)} instead")


def events_folder(runs: list[Run]) -> Path:
    """compare's TensorBoard output goes beside the first run shown (an experiment's teacher, the run every
    experiment has), in an event file of its own: a folder of its own would show in every run list as an
    empty run. Only compare's own files (EVENTS_SUFFIX) are ever replaced; the run's are never touched."""
    return Path(runs[0].row["path"])


def log_to_tensorboard(folder: Path, charts: list[tuple[str, str, object]], summary: str) -> None:
    from torch.utils.tensorboard import SummaryWriter  # slow import: only once there are charts

    mine = f"events.out.tfevents.*{EVENTS_SUFFIX}"
    old = set(folder.glob(mine))
    with SummaryWriter(str(folder), filename_suffix=EVENTS_SUFFIX) as writer:
        for tag, _, image in charts:
            writer.add_image(tag, image, 0, dataformats="HWC")
        writer.add_text(SUMMARY_TAG, summary, 0)
    # The charts are a snapshot of the runs as they are now: replace compare's last event file (only
    # compare's: the suffix marks them), unless the new one reused its name.
    if set(folder.glob(mine)) - old:
        for path in old:
            path.unlink(missing_ok=True)


def write_charts(runs: list[Run], groups: list[list[Run]], result: dict, root: Path) -> dict:
    charts = [(CHART_TAG, CHART_FILE, accuracy_vs_params(params_points(runs, groups), "test accuracy vs parameters")),
              (ACCURACY_TAG, ACCURACY_FILE, accuracy_per_run(accuracy_points(runs), "test accuracy, 95% interval"))]
    charts += per_class_charts(runs, root)
    folder = events_folder(runs)
    try:
        names = [chart_name(root, name) for _, name, _ in charts]
        for name, (_, _, image) in zip(names, charts):
            write_png(root / name, image)
        log_to_tensorboard(folder, charts, markdown_summary(result))
    except (UserError, OSError) as err:  # a read-only folder of runs can still be compared: the table is the result
        result["notes"].append(f"charts not written ({err}); the table is complete")
        return {"chart": None, "charts": [], "tensorboard": None}
    moved = [(name, new) for (_, name, _), new in zip(charts, names) if new != name]
    result["notes"] += [moved_note(moved, root)] if moved else []
    return {"chart": str(root / names[0]), "charts": [str(root / name) for name in names], "tensorboard": str(folder)}


# ----------------------------------------------------------------------------------------------------------
# Tables: the key columns fit 80 characters; --wide adds the rest.

def shown(fmt: Callable[[float], str]) -> Callable[[object], str]:
    return lambda value: "-" if value is None else fmt(value)


def p_text(p: float) -> str:
    return f"{p:.3g}"  # 3 digits, so 0.0496 never reads as "0.05"


def gain_text(row: dict) -> str:
    gain, interval = row["gain_over_baseline"], row["gain_interval"]
    if gain is None:
        return "-"
    return f"{gain:+.2f}" + (f" [{interval[0]:+.2f},{interval[1]:+.2f}]" if interval else "")


def field(key: str, fmt: Callable[[float], str]) -> Callable[[dict], str]:
    text = shown(fmt)
    return lambda row: text(row.get(key))


class Column(NamedTuple):
    header: str
    cell: Callable[[dict], str]
    left: bool  # left-justified (text; gains, so their point estimates line up)
    key: bool  # in the default 80-column table


# One place decides how every column looks, in the table, --wide and the TensorBoard summary.
COLUMNS = [
    Column("run", lambda row: Path(row["path"]).name, True, True),
    Column("role", field("role", str), True, False),
    Column("arch", field("arch", str), True, False),
    Column("method", field("method", str), True, False),
    Column("seed", field("seed", str), False, False),
    Column("params", field("params", lambda v: f"{v / 1e6:.2f}M"), False, True),
    Column("GFLOPs", field("gflops", lambda v: f"{v:.3f}"), False, False),
    Column("test acc", field("test_accuracy", percent), False, True),
    Column("best val", field("best_val_accuracy", percent), False, False),
    Column("gain [95% CI]", gain_text, True, True),
    Column("McNemar p", field("mcnemar_p", p_text), False, False),
    Column("agree", field("teacher_agreement", percent), False, True),
    Column("KL", field("teacher_kl", lambda v: f"{v:.3f}"), False, False),
    Column("epochs", field("epochs", str), False, False),
    Column("wall time", field("wall_seconds", minutes), False, False),
    Column("img/s", field("train_images_per_second", lambda v: f"{v:,.0f}"), False, False),
]
# Left out, first to last, where the width cannot hold every column: run names say role, arch and method
# already, the statistics go last; run, test accuracy and gain always stay.
DROP_FIRST = ("img/s", "wall time", "epochs", "GFLOPs", "role", "arch", "method", "seed", "best val", "KL",
              "McNemar p", "agree", "params")
RUN_WRAP = 20  # characters of a run name before a key column is left out to make room
UNLIMITED = 10_000  # characters: --wide into a file or a pipe, where no edge limits the table
SUMMARY_COLUMNS = ("params", "test acc", "gain [95% CI]", "McNemar p", "agree")
CAPTION = ("gain: test accuracy minus the baseline's of the same arch, in points, with its 95% interval; "
           "agree: top-1 agreement with the teacher")


def compact_table(**options) -> Table:
    # No outer border and one space each side of a cell: five key columns fit 80 characters.
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left",
                 caption_justify="left", **options)


def runs_table(rows: list[dict], columns: list[Column], run_width: int | None = None) -> Table:
    table = compact_table(caption=CAPTION)
    for c in columns:
        # Only the run column may wrap: a cut number would read as another number, and rich cuts
        # non-wrapping cells with an ellipsis only when nothing else can give way.
        table.add_column(c.header, justify="left" if c.left else "right", no_wrap=c.header != "run",
                         overflow="fold", max_width=run_width if c.header == "run" else None)
    for row in rows:
        table.add_row(*(c.cell(row) for c in columns))
    return table


def verdict(row: dict) -> str | None:
    """One sentence on a student's gain: its size, interval and whether it stands out from the noise."""
    if row["gain_over_baseline"] is None:
        return None
    head = f"{Path(row['name']).name}: {row['gain_over_baseline']:+.2f} points over {Path(row['baseline_run']).name}"
    p, interval = row["mcnemar_p"], row["gain_interval"]
    if p is None:
        return f"{head} (without both runs' {PREDICTIONS_FILE}: no interval or p)"
    ci = f", 95% CI [{interval[0]:+.2f}, {interval[1]:+.2f}]" if interval else ""
    words = f"significant at {SIGNIFICANCE:.0%}" if p < SIGNIFICANCE else "not significant — within noise"
    return f"{head}{ci}, McNemar p = {p_text(p)}: {words}"


def spread(mean: float | None, std: float | None, fmt: str, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    return format(scale * mean, fmt) + ("" if std is None else f" ± {scale * std:.2f}")


def seeds_table(aggregates: list[dict]) -> Table:
    table = compact_table(title="over seeds (mean ± sd; t-test: student vs baseline, paired by seed)")
    for header in ("runs", "seeds", "test acc (%)", "gain (points)", "t-test p"):
        table.add_column(header, justify="left" if header in ("runs", "seeds") else "right",
                         no_wrap=header not in ("runs", "seeds"), overflow="fold")
    for a in aggregates:
        name = " ".join(str(a[k]) for k in ("role", "arch", "method") if a[k] not in (None, "none"))
        table.add_row(name, ",".join(map(str, a["seeds"])),
                      spread(a["test_accuracy_mean"], a["test_accuracy_std"], ".2f", 100),
                      spread(a["gain_mean"], a["gain_std"], "+.2f"), shown(p_text)(a["p"]))
    return table


def needed_width(console: Console, table: Table) -> int:
    """The characters the table takes with no cell cut or folded (a run name either)."""
    return Measurement.get(console, console.options.update_width(UNLIMITED), table).maximum


def fitted_table(rows: list[dict], wide: bool, console: Console) -> tuple[Table, str | None]:
    """The key columns (--wide: every column) less those, in DROP_FIRST order, the console's width cannot
    hold; returns the table and, where columns were left out, a line that says which."""
    wanted = [c for c in COLUMNS if wide or c.key]
    full = needed_width(console, runs_table(rows, wanted))

    def fits(columns: list[Column], column: Column) -> bool:
        # A --wide column goes before a run name wraps; a key column only where names wrapped at
        # RUN_WRAP characters would not make room.
        return needed_width(console, runs_table(rows, columns, RUN_WRAP if column.key else None)) <= console.width

    columns, dropped = list(wanted), []
    for column in sorted((c for c in wanted if c.header in DROP_FIRST), key=lambda c: DROP_FIRST.index(c.header)):
        if fits(columns, column):
            break
        columns, dropped = [c for c in columns if c is not column], [*dropped, column]
    for column in reversed(dropped):  # a narrower one left out on the way may fit again, the most useful first
        trial = [c for c in wanted if c in columns or c is column]
        if fits(trial, column):
            columns, dropped = trial, [c for c in dropped if c is not column]
    if not dropped:
        return runs_table(rows, columns), None
    return runs_table(rows, columns), (f"left out to fit {console.width} columns: "
                                       f"{', '.join(c.header for c in dropped)} (every column takes {full}; a wider "
                                       f"terminal or --json shows them)")


def output_width(wide: bool) -> int:
    """$COLUMNS, else the terminal's width; off a terminal 80, or for --wide the table's own width (a file
    or a log has no edge to fit)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        width = os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else 0
    except (AttributeError, ValueError, OSError):  # no real file behind stdout (captured, say)
        width = 0
    return width or (UNLIMITED if wide else 80)  # a pseudo-terminal may report 0


def print_table(console: Console, table: Table) -> None:
    """Line by line, without the spaces rich pads every line with up to the table's full width."""
    for line in console.render_lines(table, pad=False):
        while line and not line[-1].text.strip():
            line.pop()
        if line:
            line[-1] = Segment(line[-1].text.rstrip(), line[-1].style)
        console.print(Segments([*line, Segment.line()]))  # `end` applies to text only


def unbroken(result: dict) -> tuple[str, ...]:
    """The paths and run names the output may show, longest first: `say` never breaks one, spaces and all."""
    rows = result["runs"]
    names = {result.get("root", ""), *result.get("skipped", []), *(r["path"] for r in rows),
             *(r["name"] for r in rows), *(Path(r["name"]).name for r in rows)}
    return tuple(sorted((n for n in names if " " in n), key=len, reverse=True))


def say(console: Console, text: str, whole: tuple[str, ...] = ()) -> None:
    """Text wrapped at spaces, never inside a word or one of `whole` (paths): one longer than the line stands
    on a line of its own and overflows, so it can still be copied."""
    glue = "\0"  # not a space to textwrap
    for name in whole:
        text = text.replace(name, name.replace(" ", glue))
    for line in textwrap.wrap(text, console.width, subsequent_indent="  ", break_long_words=False,
                              break_on_hyphens=False):
        console.print(line.replace(glue, " "), soft_wrap=True)  # soft_wrap: rich neither wraps nor cuts it


def by_experiment(result: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in result["runs"]:
        groups[shown_experiment(row, Path(result.get("root", ".")))].append(row)
    return groups


def print_comparison(result: dict, wide: bool = False) -> None:
    """One table per experiment folder, a sentence per student gain, seed aggregates, notes, the charts."""
    width = output_width(wide)
    # markup off: run names and "[+0.80,+1.66]" are text, not rich markup. A height too, or rich would
    # take 80 columns on a TERM=dumb terminal whatever the width.
    console = Console(highlight=False, markup=False, width=width, height=25)
    whole = unbroken(result)
    for name, rows in by_experiment(result).items():
        console.print(f"runs in {name}", soft_wrap=True)  # a path: unbroken, where rich's title would break it
        table, left_out = fitted_table(rows, wide, console)
        print_table(console, table)
        if left_out:
            say(console, left_out)
        for line in filter(None, map(verdict, rows)):
            say(console, line, whole)
        aggregates = [a for a in result.get("aggregates", []) if a["experiment"] == name]
        if aggregates:
            print_table(console, seeds_table(aggregates))
    for note in result.get("notes", []):
        say(console, f"note: {note}", whole)
    if result.get("charts"):  # each path whole on a line of its own, to copy
        console.print("charts:")
        for path in result["charts"]:
            console.print(f"  {path}", soft_wrap=True)
        if result.get("tensorboard"):
            console.print(f"TensorBoard: tensorboard --logdir {shlex.quote(result['root'])}", soft_wrap=True)


def markdown_summary(result: dict) -> str:
    """The key columns, the verdicts and the notes as markdown, for TensorBoard's text tab."""
    cells = {c.header: c.cell for c in COLUMNS}

    def escape(text: str) -> str:  # a "|" in a run name would end its table cell
        return text.replace("|", "\\|")

    lines = ["| run | " + " | ".join(SUMMARY_COLUMNS) + " |", "|---" * (len(SUMMARY_COLUMNS) + 1) + "|"]
    for row in result["runs"]:
        lines.append("| " + " | ".join(escape(t) for t in (row["name"], *(cells[h](row) for h in SUMMARY_COLUMNS)))
                     + " |")
    lines += [""] + [f"- {escape(line)}" for line in filter(None, map(verdict, result["runs"]))]
    lines += [f"- note: {escape(note)}" for note in result["notes"]]
    return "\n".join(lines)
