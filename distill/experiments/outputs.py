"""What `distill compare` writes: which charts it draws from the runs (distill.experiments.chart draws them),
the PNG files beside the runs, never replacing a file it did not write, and the same images plus a markdown
summary in TensorBoard, in an event file of compare's own.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from distill import stats
from distill.engine.checkpoint import write_atomic
from distill.errors import UserError
from distill.experiments.chart import Point, Series, accuracy_per_run, accuracy_vs_params, per_class
from distill.experiments.runs import FinishedRun, Skipped, read_regular, same_experiment
from distill.experiments.tables import markdown_summary

CHART_FILE, CHART_TAG = "compare.png", "compare/accuracy_vs_params"
ACCURACY_FILE, ACCURACY_TAG = "compare_accuracy.png", "compare/test_accuracy"
SUMMARY_TAG = "compare/summary"
EVENTS_SUFFIX = ".distill-compare"  # marks compare's own event files: the only ones it ever deletes
# Every chart compare writes carries this PNG text chunk: the only files of a chart's name it ever replaces.
CHART_MARK = ("Software", "distill compare")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chart_label(row: dict) -> str:
    """Short, and the same on every chart: the arch, then the method of a student or the role of another run
    (resnet8 kd, resnet8 baseline, resnet20 teacher)."""
    parts = (row["arch"], row["method"] if row["role"] == "student" else row["role"])
    return " ".join(str(p) for p in parts if p)


def params_points(runs: list[FinishedRun], groups: list[list[FinishedRun]]) -> list[Point]:
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


def accuracy_points(runs: list[FinishedRun]) -> list[Point]:
    points = []
    for run in runs:
        n = run.metrics.get("test_images")
        if run.accuracy is not None:
            interval = tuple(100 * v for v in stats.wilson_interval(run.accuracy, n)) if n else None
            points.append(Point(run.name, run.row["params"] or 0, 100 * run.accuracy, run.row["role"] or "?",
                                interval))
    return points


def per_class_of(run: FinishedRun) -> dict:
    found = run.metrics.get("per_class_accuracy")
    return found if isinstance(found, dict) else {}


def mean_per_class(members: list[FinishedRun], classes: list[str]) -> list[float]:
    """Percent per class, averaged over the members (the seeds of one recipe); NaN where unknown."""
    def percent(value) -> float:
        return 100 * value if isinstance(value, (int, float)) else math.nan

    columns = zip(*([percent(per_class_of(m).get(c)) for c in classes] for m in members))
    return [sum(column) / len(members) for column in columns]


def per_class_series(students: list[FinishedRun], runs: list[FinishedRun], classes: list[str]) -> list[Series]:
    """Teacher, baseline and each student method of one arch (the mean of its seeds where there are several)."""
    teacher = students[0].teacher
    arch = students[0].row["arch"]
    groups = [([teacher], chart_label(teacher.row), "teacher")] if teacher and per_class_of(teacher) else []
    baselines = [b for b in same_experiment(runs, students[0], "baseline") if b.row["arch"] == arch and per_class_of(b)]
    groups += [(baselines, chart_label(baselines[0].row), "baseline")] if baselines else []
    by_method: dict[str, list[FinishedRun]] = defaultdict(list)
    for student in students:
        by_method[str(student.row["method"])].append(student)
    groups += [(members, chart_label(members[0].row), "student") for members in by_method.values()]
    return [Series(label + (f" ({len(members)} seeds)" if len(members) > 1 else ""), role,
                   mean_per_class(members, classes)) for members, label, role in groups]


def per_class_charts(runs: list[FinishedRun], root: Path) -> list[tuple[str, str, object]]:
    """(tag, file name, image) for each student arch of each experiment whose runs have per-class accuracy."""
    groups: dict[tuple[Path, str], list[FinishedRun]] = defaultdict(list)
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


# ----------------------------------------------------------------------------------------------------------
# The files: PNGs beside the runs (never a user's file replaced) and compare's own TensorBoard event file.

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


def events_folder(runs: list[FinishedRun]) -> Path:
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


def write_charts(runs: list[FinishedRun], groups: list[list[FinishedRun]], result: dict, root: Path) -> dict:
    """The PNGs and the TensorBoard summary; {"chart", "charts", "tensorboard"} say where they went (None and []
    where they could not be written: a note says why, and the table is the result)."""
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
