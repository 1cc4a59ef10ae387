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
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from distill import stats
from distill.chart import Point, Series, accuracy_per_run, accuracy_vs_params, per_class
from distill.checkpoint import (PREDICTIONS_FILE, PREDICTIONS_FORMAT, PREDICTIONS_VERSION, read_torch_file,
                                write_atomic)
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


def read_run(folder: Path, root: Path) -> Run:
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError(f"a JSON {type(metrics).__name__}, not an object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"cannot read {path} ({exc}): delete that run folder or rerun it") from None
    name = folder.relative_to(root).as_posix()
    seed = metrics.get("seed")
    row = {"name": folder.name if name == "." else name, "path": str(folder)}
    row |= {key: finite(metrics.get(key)) for key in FIELDS}
    row["seed"] = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return Run(folder, row, metrics)


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
    given = run.metrics.get("teacher") if isinstance(run.metrics.get("teacher"), dict) else {}
    if isinstance(given.get("path"), str):
        folder = Path(given["path"]).parent
        for match in (lambda t: t.folder.resolve() == folder.resolve(), lambda t: t.folder.name == folder.name):
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
        try:  # the one reader of torch files: weights_only, and every failure one line
            data = read_torch_file(path)
        except UserError:
            data, problem = None, "is unreadable"
        else:
            problem = predictions_problem(data)
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


def predictions_problem(data: object) -> str | None:
    """What is wrong with a loaded predictions.pt, or None when it has the documented layout."""
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

    Returns {"runs": [...], "aggregates": [...], "notes": [...], "chart": compare.png, "charts": [...],
    "tensorboard": folder or None, "root": root}."""
    root = Path(root)
    notes: list[str] = []
    runs = sorted((read_run(folder, root) for folder in find_runs(root)), key=lambda r: sort_key(r.row))
    link_runs(runs, Predictions(notes))
    groups = seed_groups(runs, notes)
    result = {"runs": [r.row for r in runs], "aggregates": [aggregate(group, root) for group in groups],
              "notes": notes, "root": str(root)}
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
            point.interval = tuple(point.baseline.accuracy + g for g in run.row["gain_interval"])
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
            known = isinstance(n, int) and n > 0
            interval = tuple(100 * v for v in stats.wilson_interval(run.accuracy, n)) if known else None
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


def write_png(path: Path, image) -> None:
    from PIL import Image

    write_atomic(path, lambda fh: Image.fromarray(image).save(fh, format="PNG"),
                 advice="make the folder writable, or compare a writable copy of it")


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
        for _, name, image in charts:
            write_png(root / name, image)
        log_to_tensorboard(folder, charts, markdown_summary(result))
    except (UserError, OSError) as err:  # a read-only folder of runs can still be compared: the table is the result
        result["notes"].append(f"charts not written ({err}); the table is complete")
        return {"chart": None, "charts": [], "tensorboard": None}
    return {"chart": str(root / CHART_FILE), "charts": [str(root / name) for _, name, _ in charts],
            "tensorboard": str(folder)}


# ----------------------------------------------------------------------------------------------------------
# Tables: the key columns fit 80 characters; --wide adds the rest.

def shown(fmt: Callable[[float], str]) -> Callable[[object], str]:
    return lambda value: "-" if value is None else fmt(value)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s" if seconds >= 60 else f"{seconds:.1f}s"


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


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


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
SUMMARY_COLUMNS = ("params", "test acc", "gain [95% CI]", "McNemar p", "agree")
CAPTION = ("gain: test accuracy minus the baseline's of the same arch, in points, with its 95% interval; "
           "agree: top-1 agreement with the teacher")


def compact_table(**options) -> Table:
    # No outer border and one space each side of a cell: five key columns fit 80 characters.
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left",
                 caption_justify="left", **options)


def runs_table(rows: list[dict], title: str, wide: bool) -> Table:
    table = compact_table(title=title, caption=CAPTION)
    columns = [c for c in COLUMNS if wide or c.key]
    for c in columns:
        # Only the run column may wrap: a cut number would read as another number, and rich cuts
        # non-wrapping cells with an ellipsis only when nothing else can give way.
        table.add_column(c.header, justify="left" if c.left else "right", no_wrap=c.header != "run",
                         overflow="fold")
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


def by_experiment(result: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in result["runs"]:
        groups[shown_experiment(row, Path(result.get("root", ".")))].append(row)
    return groups


def print_comparison(result: dict, wide: bool = False, console: Console | None = None) -> None:
    """One table per experiment folder, a sentence per student gain, seed aggregates, notes, the charts."""
    # markup off: run names and "[+0.80,+1.66]" are text, not rich markup. Piped into a file or a log,
    # --wide gets the width it needs instead of 80 columns.
    console = console or Console(highlight=False, markup=False,
                                 width=None if not wide or sys.stdout.isatty() else 240)
    for name, rows in by_experiment(result).items():
        console.print(runs_table(rows, f"runs in {name}", wide))
        for line in filter(None, map(verdict, rows)):
            console.print(line)
        aggregates = [a for a in result.get("aggregates", []) if a["experiment"] == name]
        if aggregates:
            console.print(seeds_table(aggregates))
    # Lines with paths are left to the terminal to wrap: rich would break a path where it cannot be copied.
    for note in result.get("notes", []):
        console.print(f"note: {note}", soft_wrap=True)
    if result.get("charts"):
        where = f"; TensorBoard: tensorboard --logdir {result['root']}" if result.get("tensorboard") else ""
        console.print(f"charts: {', '.join(result['charts'])}{where}", soft_wrap=True)


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
