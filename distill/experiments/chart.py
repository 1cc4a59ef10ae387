"""The charts of `distill compare`, drawn with matplotlib and returned as RGB arrays (H, W, 3).

Matplotlib rather than hand drawing with Pillow: log axes with chosen ticks, interval whiskers, legends,
text extents for placing labels and a layout that fits long tick labels come for free, and the charts
stay short to read. Accuracies are drawn as dots with intervals, not bars: bars of 90-95% from 0 would
hide the few points that separate the runs.
Figures are made with matplotlib.figure.Figure on an Agg canvas, never pyplot: no GUI backend is
needed (servers, CI) and no global backend is switched under a notebook that calls `compare`.

Every chart is 960 px wide with 25-31 px text: TensorBoard shows an image as a card about 310 px wide,
a third of that, where the text is still 8-10 px tall and legible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

WIDTH, DPI = 960, 100
PARAMS_HEIGHT = 600
TEXT, SMALL, TITLE = 20, 18, 22  # points: 28, 25 and 31 px at 100 dpi
ROLE_COLOURS = {"teacher": "#d6602a", "student": "#2c6eba", "baseline": "#787878"}
OTHER_COLOUR = "#5aa05a"
STUDENT_SHADES = ("#2c6eba", "#7cb8ee", "#163f73", "#4e9a9a")  # one per student method on the per-class chart
MARKERS = {"teacher": "D", "baseline": "s", "student": "o"}
DODGE = 0.035  # decades between the seeds of one recipe on the log x axis
MAX_CLASSES = 12  # more class rows than this would not stay legible on a TensorBoard card
# Offsets (points) tried for a label, nearest first; beyond one line away a leader line joins it to its dot.
LABEL_SPOTS = [(dx, dy) for dy in (0, -20, 20) for dx in (14, -14)] + \
    [(dx, dy) for far in (40, 60, 80) for dy in (-far, far) for dx in (14, -14)]


@dataclass(eq=False)
class Point:
    """One run: a point (accuracy vs parameters) or a row (accuracy per run)."""

    label: str  # "" draws no label (e.g. all but one of a group of seeds)
    params: float
    accuracy: float  # percent
    role: str
    interval: tuple[float, float] | None = None  # percent, drawn as whiskers
    baseline: Point | None = None  # joined to this point by a dashed line
    slot: tuple[int, int] = (0, 1)  # (index, count) among runs that differ only in their seed: drawn side by side


@dataclass
class Series:
    """Per-class accuracies (percent, in the chart's class order) of one run or the mean of its seeds."""

    label: str
    role: str
    values: list[float]


def colour(role: str) -> str:
    return ROLE_COLOURS.get(role, OTHER_COLOUR)


def new_figure(height: int, title: str) -> tuple[Figure, object]:
    fig = Figure(figsize=(WIDTH / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.set_facecolor("white")
    # A figure title from the left edge: an axes title would start after long tick labels and be cut.
    fig.suptitle(title, x=0.01, ha="left", fontsize=TITLE)
    return fig, fig.add_subplot()


def rendered(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def format_params(params: float, _position=None) -> str:
    """One unit on every tick, millions: 0.05M, 0.27M, 1.23M, 23.5M (never 10k next to 0.1M)."""
    return f"{params / 1e6:.3g}M"


def style_axis(ax, xlabel: str, subtitle: str = "") -> None:
    ax.set_title(subtitle, fontsize=SMALL, loc="left", color="#444444")
    ax.set_xlabel(xlabel, fontsize=TEXT)
    ax.tick_params(labelsize=SMALL)
    ax.grid(True, color="#e4e4e4", linewidth=1)
    ax.set_axisbelow(True)


def x_of(p: Point) -> float:
    """Seeds of one recipe share a size: spread them a little (in log x) so their whiskers do not overlap."""
    index, count = p.slot
    return p.params * 10 ** (DODGE * (index - (count - 1) / 2))


def params_axis(ax, points: list[Point]) -> None:
    """Log x with ticks at 1-2-5 (a narrow span) or whole decades, padded so labels fit beside the points."""
    logs = [math.log10(x_of(p)) for p in points] or [6.0]
    span = max(logs) - min(logs)
    ax.set_xscale("log")
    ax.set_xlim(10 ** (min(logs) - 0.25 - 0.1 * span), 10 ** (max(logs) + 0.25 + 0.1 * span))
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(format_params))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ys = [p.accuracy for p in points] + [y for p in points for y in p.interval or ()] or [0.0, 100.0]
    pad = max(1.0, 0.12 * (max(ys) - min(ys)))
    ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))


def obstacles(ax, points: list[Point], renderer) -> list[Bbox]:
    """Pixel boxes labels must not cover: the legend, every dot and every whisker."""
    boxes = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    for p in points:
        x, y = ax.transData.transform((x_of(p), p.accuracy))
        boxes.append(Bbox.from_extents(x - 10, y - 10, x + 10, y + 10))
        if p.interval is not None:
            (_, low), (_, high) = ax.transData.transform([(x_of(p), p.interval[0]), (x_of(p), p.interval[1])])
            boxes.append(Bbox.from_extents(x - 12, low - 3, x + 12, high + 3))
    return boxes


def place_labels(fig: Figure, ax, points: list[Point]) -> None:
    """Each label at the first of LABEL_SPOTS where it covers no earlier label, dot, whisker or the legend and
    stays inside the axes; with no such spot it is left out rather than drawn over something else."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = obstacles(ax, points, renderer)
    for p in sorted((p for p in points if p.label), key=lambda p: -p.accuracy):
        # A student above its baseline looks upward first, leaving the space below to the baseline's label.
        up = -1 if p.baseline is not None and p.accuracy >= p.baseline.accuracy else 1
        for dx, dy in ((dx, up * dy) for dx, dy in LABEL_SPOTS):
            leader = {"arrowprops": {"arrowstyle": "-", "color": colour(p.role)}} if abs(dy) > 20 else {}
            text = ax.annotate(p.label, (x_of(p), p.accuracy), xytext=(dx, dy), textcoords="offset points",
                               ha="left" if dx > 0 else "right", va="center", fontsize=SMALL, color=colour(p.role),
                               **leader)
            text.update_positions(renderer)
            box = Text.get_window_extent(text, renderer)  # the text alone: an Annotation's box holds its leader
            if frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1) \
                    and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            text.remove()


def accuracy_vs_params(points: list[Point], title: str) -> np.ndarray:
    """Test accuracy against parameters (log x), coloured by role; each student joined to its baseline by a
    dashed line, with the 95% interval of its gain over that baseline as whiskers."""
    points = [p for p in points if p.params > 0 and math.isfinite(p.accuracy)]
    fig, ax = new_figure(PARAMS_HEIGHT, title)
    whiskers = any(p.interval for p in points)
    style_axis(ax, "parameters (log scale)", "whiskers: 95% interval of the gain over the baseline" if whiskers else "")
    ax.set_ylabel("test accuracy (%)", fontsize=TEXT)
    params_axis(ax, points)
    for p in points:
        if p.baseline is not None:
            ax.plot([x_of(p.baseline), x_of(p)], [p.baseline.accuracy, p.accuracy], "--", color="#9a9a9a", lw=2,
                    zorder=1)
        if p.interval is not None:
            ax.errorbar([x_of(p)], [p.accuracy], yerr=[[p.accuracy - p.interval[0]], [p.interval[1] - p.accuracy]],
                        color=colour(p.role), capsize=8, elinewidth=3, capthick=3, zorder=2)
    for role in sorted({p.role for p in points}, key=lambda r: (r not in ROLE_COLOURS, r)):
        mine = [p for p in points if p.role == role]
        # Unclipped: a dot at 100% (the axis stops there) is drawn whole.
        ax.scatter([x_of(p) for p in mine], [p.accuracy for p in mine], s=160, color=colour(role),
                   edgecolor="#333333", zorder=3, label=role, clip_on=False)
    if points:
        ax.legend(fontsize=SMALL, loc="best", framealpha=0.9)
    fig.canvas.draw()  # labels are placed against the final layout, which must not move afterwards
    fig.set_layout_engine("none")
    place_labels(fig, ax, points)
    return rendered(fig)


def accuracy_per_run(points: list[Point], title: str) -> np.ndarray:
    """One row per run: its test accuracy as a dot with the 95% binomial interval and the value beside it."""
    fig, ax = new_figure(170 + 52 * max(1, len(points)), title)
    style_axis(ax, "test accuracy (%)")
    rows = range(len(points))[::-1]  # the first run on top, as in the table
    for y, p in zip(rows, points):
        low, high = p.interval or (p.accuracy, p.accuracy)
        # max(0, ...): at 0% or 100% the interval's end equals the point up to rounding
        ax.errorbar([p.accuracy], [y], xerr=[[max(0.0, p.accuracy - low)], [max(0.0, high - p.accuracy)]], fmt="o",
                    markersize=13,
                    color=colour(p.role), capsize=7, elinewidth=3, capthick=3)
        ax.annotate(f"{p.accuracy:.2f}%", (high, y), xytext=(12, 0), textcoords="offset points", va="center",
                    fontsize=SMALL, color=colour(p.role))
    ax.set_yticks(list(rows), [p.label for p in points], fontsize=SMALL)
    ax.set_ylim(-0.7, len(points) - 0.3)
    values = [v for p in points for v in (p.interval or (p.accuracy,))] or [0.0, 100.0]
    span = max(max(values) - min(values), 1.0)
    ax.set_xlim(max(0.0, min(values) - 0.08 * span), max(values) + 0.3 * span)  # room for the value text
    return rendered(fig)


def most_different(classes: list[str], series: list[Series]) -> tuple[list[str], list[Series], str]:
    """All classes when they fit; else the MAX_CLASSES where the first student differs most from the baseline
    (or, without a baseline, from the teacher), named in a subtitle."""
    if len(classes) <= MAX_CLASSES:
        return classes, series, ""
    student = next((s for s in series if s.role == "student"), series[-1])
    other = next((s for s in series if s.role == "baseline"), next((s for s in series if s is not student), student))
    gaps = [abs(a - b) if math.isfinite(a - b) else -1.0 for a, b in zip(student.values, other.values)]
    keep = sorted(sorted(range(len(classes)), key=lambda i: -gaps[i])[:MAX_CLASSES])
    names = (label.split(" (")[0] for label in (student.label, other.label))  # without "(3 seeds)": shorter
    subtitle = "{} of {} classes: the largest {} vs {} gaps".format(MAX_CLASSES, len(classes), *names)
    return ([classes[i] for i in keep], [Series(s.label, s.role, [s.values[i] for i in keep]) for s in series],
            subtitle)


def per_class(classes: list[str], series: list[Series], title: str) -> np.ndarray:
    """One row per class, one marker per series (teacher, baseline, each student method), x zoomed to the values."""
    classes, series, subtitle = most_different(classes, series)
    fig, ax = new_figure(250 + 56 * len(classes) + 40 * math.ceil(len(series) / 3), title)
    style_axis(ax, "test accuracy (%)")
    shades = iter(STUDENT_SHADES * len(series))
    rows = np.arange(len(classes))[::-1]
    for k, s in enumerate(series):
        dodge = 0.36 * (k - (len(series) - 1) / 2) / max(1, len(series) - 1)  # equal values stay visible
        tint = next(shades) if s.role == "student" else colour(s.role)
        ax.scatter(s.values, rows - dodge, s=170, marker=MARKERS.get(s.role, "o"), color=tint, edgecolor="#333333",
                   zorder=3, label=s.label, clip_on=False)
    ax.set_yticks(rows, classes, fontsize=SMALL)
    ax.set_ylim(-0.6, len(classes) - 0.4)
    values = [v for s in series for v in s.values if math.isfinite(v)] or [0.0, 100.0]
    pad = max(1.0, 0.05 * (max(values) - min(values)))
    ax.set_xlim(max(0.0, min(values) - pad), min(100.0, max(values) + pad))
    # The subtitle as the legend's title: it spans the figure, where an axes title would start after long class names.
    fig.legend(fontsize=SMALL, loc="outside lower center", ncols=min(len(series), 3), frameon=False,
               title=subtitle or None, title_fontsize=SMALL)
    return rendered(fig)
