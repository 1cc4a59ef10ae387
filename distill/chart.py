"""Accuracy-vs-parameters scatter chart drawn with Pillow (no matplotlib dependency).

One labelled point per run on a log-x axis, coloured by role, so the teacher, the students and their
baselines sit side by side: a student above its baseline (same x: same architecture) gained from KD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 960, 600
LEFT, RIGHT, TOP, BOTTOM = 80, 40, 60, 60  # plot-area margins: room for tick labels and the title
ROLE_COLOURS = {"teacher": (214, 96, 39), "student": (44, 110, 186), "baseline": (120, 120, 120)}
OTHER_COLOUR = (90, 160, 90)
AXIS, GRID, TEXT = (60, 60, 60), (228, 228, 228), (30, 30, 30)


@dataclass
class Point:
    label: str
    params: float  # x: parameter count (log scale)
    accuracy: float  # y: test accuracy in percent
    role: str


@dataclass
class Axes:
    """Maps data to pixels: x = log10(params) on [x_lo, x_hi], y = accuracy on [y_lo, y_hi]."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float

    def px(self, params: float, accuracy: float) -> tuple[float, float]:
        fx = (math.log10(params) - self.x_lo) / (self.x_hi - self.x_lo)
        fy = (accuracy - self.y_lo) / (self.y_hi - self.y_lo)
        return LEFT + fx * (WIDTH - LEFT - RIGHT), HEIGHT - BOTTOM - fy * (HEIGHT - TOP - BOTTOM)


def axes_for(points: list[Point]) -> Axes:
    """Whole decades on x; y padded to multiples of 5 points inside [0, 100]."""
    logs = [math.log10(p.params) for p in points] or [6.0]
    accs = [p.accuracy for p in points] or [50.0]
    x_lo, x_hi = math.floor(min(logs)), math.ceil(max(logs))
    if x_hi == x_lo:  # every run has the same size: still show one whole decade
        x_hi += 1
    y_lo = max(0.0, 5 * math.floor((min(accs) - 2) / 5))
    y_hi = min(100.0, 5 * math.ceil((max(accs) + 2) / 5))
    return Axes(x_lo, x_hi, y_lo, max(y_hi, y_lo + 5))


def format_params(params: float) -> str:
    return f"{params / 1e6:g}M" if params >= 1e5 else f"{params / 1e3:g}k"


def draw_axes(draw: ImageDraw.ImageDraw, axes: Axes, font) -> None:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    for decade in range(int(axes.x_lo), int(axes.x_hi) + 1):
        for mult in range(1, 10):  # log grid: a line at 1..9 x each decade, labels at the decades
            value = mult * 10.0 ** decade
            if math.log10(value) > axes.x_hi + 1e-9:
                break
            x, _ = axes.px(value, axes.y_lo)
            draw.line([(x, TOP), (x, bottom)], fill=GRID if mult > 1 else (205, 205, 205))
            if mult == 1:
                draw.text((x, bottom + 8), format_params(value), fill=TEXT, font=font, anchor="mt")
    step = 5 if axes.y_hi - axes.y_lo <= 40 else 10
    for tick in range(int(axes.y_lo), int(axes.y_hi) + 1, step):
        _, y = axes.px(10 ** axes.x_lo, tick)
        draw.line([(LEFT, y), (right, y)], fill=GRID)
        draw.text((LEFT - 8, y), f"{tick}%", fill=TEXT, font=font, anchor="rm")
    draw.rectangle([(LEFT, TOP), (right, bottom)], outline=AXIS)
    draw.text(((LEFT + right) / 2, HEIGHT - 18), "parameters (log scale)", fill=TEXT, font=font, anchor="mm")
    draw.text((12, TOP - 20), "test accuracy", fill=TEXT, font=font, anchor="lm")


def overlaps(box: tuple, boxes: list[tuple]) -> bool:
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def place_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, taken: list[tuple]) -> tuple:
    """First spot right (then left) of the point, nudged down or up, that hits no earlier label.

    A student and its baseline share an x (same architecture), so their labels often collide; points
    come best first, so nudging down first keeps the labels in the points' order."""
    x, y = xy
    candidates = [(side, dy) for side in (1, -1) for dy in (0, 14, -14, 28, -28, 42, -42)]
    for side, dy in candidates:
        anchor = "lm" if side > 0 else "rm"
        box = draw.textbbox((x + side * 9, y + dy), text, font=font, anchor=anchor)
        inside = box[0] >= LEFT and box[2] <= WIDTH - RIGHT and box[1] >= TOP and box[3] <= HEIGHT - BOTTOM
        if inside and not overlaps(box, taken):
            return (x + side * 9, y + dy), anchor, box
    box = draw.textbbox((x + 9, y), text, font=font, anchor="lm")
    return (x + 9, y), "lm", box  # crowded chart: overlap rather than drop the label


def draw_legend(draw: ImageDraw.ImageDraw, roles: list[str], font) -> None:
    x = WIDTH - RIGHT
    for role in reversed(roles):
        width = draw.textlength(role, font=font)
        draw.text((x, TOP - 20), role, fill=TEXT, font=font, anchor="rm")
        draw.ellipse([(x - width - 16, TOP - 25), (x - width - 6, TOP - 15)],
                     fill=ROLE_COLOURS.get(role, OTHER_COLOUR))
        x -= width + 30


def accuracy_chart(points: list[Point], title: str) -> Image.Image:
    """The whole chart as an RGB image; points with a missing size or accuracy are left out."""
    points = [p for p in points if p.params > 0 and math.isfinite(p.accuracy)]
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    axes = axes_for(points)
    draw_axes(draw, axes, font)
    draw.text((WIDTH / 2, 20), title, fill=TEXT, font=ImageFont.load_default(size=16), anchor="mm")
    taken: list[tuple] = []
    for p in sorted(points, key=lambda p: -p.accuracy):
        x, y = axes.px(p.params, p.accuracy)
        colour = ROLE_COLOURS.get(p.role, OTHER_COLOUR)
        draw.ellipse([(x - 5, y - 5), (x + 5, y + 5)], fill=colour, outline=AXIS)
        text = f"{p.label} {p.accuracy:.1f}%"
        xy, anchor, box = place_label(draw, (x, y), text, font, taken)
        draw.text(xy, text, fill=colour, font=font, anchor=anchor)
        taken.append(box)
    draw_legend(draw, sorted({p.role for p in points}), font)
    return image
