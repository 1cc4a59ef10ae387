"""What TensorBoard's IMAGES tab shows at first sight (issue 17, item 23): confusion matrices whose numbers
can be read on an image card, and chart labels and titles that say the same thing the same way."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.axes
import pytest
import torch
from PIL import Image

from distill.engine.confusion import confusion_counts, confusion_png
from distill.experiments import outputs
from distill.experiments.outputs import chart_label, per_class_charts, per_class_series
from distill.experiments.runs import FinishedRun

CARD_WIDTH = 320  # px: an image card of TensorBoard 2.21 in a 1400 px wide window (bench/tb_screenshots.py)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_confusion_numbers_and_class_names_are_legible_on_a_tensorboard_card(monkeypatch):
    texts = []
    real = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda *a, **k: texts.append(real(*a, **k)) or texts[-1])
    labels = torch.arange(10).repeat(10)
    png = confusion_png(confusion_counts(labels, labels.roll(3), 10), CLASSES, "student-resnet8-kd: 70.00% test")
    with Image.open(io.BytesIO(png)) as image:
        shrink = CARD_WIDTH / image.width  # TensorBoard shows the image at the card's width
    dpi = texts[0].figure.dpi
    ticks = texts[0].axes.get_xticklabels() + texts[0].axes.get_yticklabels()
    assert len(texts) == 100 and {t.get_text() for t in ticks} == set(CLASSES)
    for text in texts + ticks:  # text height in screen pixels on the card
        assert text.get_fontsize() * dpi / 72 * shrink >= 10, (text.get_text(), text.get_fontsize(), shrink)


def run(folder: str, role: str, arch: str, method: str | None = None,
        teacher: FinishedRun | None = None) -> FinishedRun:
    row = {"name": Path(folder).name, "role": role, "arch": arch, "method": method}
    return FinishedRun(Path(folder), row, {"per_class_accuracy": {c: 0.5 for c in CLASSES}}, teacher=teacher)


def test_chart_labels_read_the_same_on_every_chart_and_the_per_class_title_names_what_it_plots(monkeypatch):
    teacher = run("exp/teacher-resnet20", "teacher", "resnet20")
    students = [run("exp/student-resnet8-kd", "student", "resnet8", "kd", teacher),
                run("exp/student-resnet8-dkd", "student", "resnet8", "dkd", teacher)]
    baseline = run("exp/baseline-resnet8", "baseline", "resnet8", "none")
    runs = [teacher, *students, baseline]
    # The accuracy-vs-parameters chart: arch first, then the method or the role
    assert [chart_label(r.row) for r in runs] == ["resnet20 teacher", "resnet8 kd", "resnet8 dkd", "resnet8 baseline"]
    # The per-class chart's legend: the same words
    series = per_class_series(students, runs, CLASSES)
    assert [(s.label, s.role) for s in series] == [("resnet20 teacher", "teacher"), ("resnet8 baseline", "baseline"),
                                                   ("resnet8 kd", "student"), ("resnet8 dkd", "student")]
    titles = []
    monkeypatch.setattr(outputs, "per_class", lambda classes, series, title: titles.append(title))
    per_class_charts(runs, Path("."))
    assert titles == ["per-class test accuracy: exp / resnet8 runs and teacher"]  # not just "resnet8"
    alone = [run(str(r.folder), "student", "resnet8", r.row["method"]) for r in students]  # taught by no run here
    per_class_charts([*alone, baseline], Path("."))
    assert titles[-1] == "per-class test accuracy: exp / resnet8 runs"  # no teacher drawn, none named


@pytest.mark.parametrize("classes", [3, 10])
def test_confusion_png_is_a_small_image_drawn_without_pyplot(classes):
    """A card-sized image, drawn without switching matplotlib's global backend (a notebook's stays)."""
    import matplotlib

    before = matplotlib.get_backend()
    labels = torch.arange(classes).repeat(4)
    png = confusion_png(confusion_counts(labels, labels, classes), CLASSES[:classes], "run: 100.00% test")
    with Image.open(io.BytesIO(png)) as image:
        assert image.width <= 2 * CARD_WIDTH and image.format == "PNG"
    assert matplotlib.get_backend() == before


def test_a_hundred_classes_are_indexed_not_named_so_the_axes_stay_legible():
    """CIFAR-100: 100 names on a 500 px axis would overlap; the ticks are class indices, every 10th."""
    from distill.engine.confusion import confusion_figure

    labels = torch.arange(100).repeat(2)
    names = [f"class_{i}" for i in range(100)]
    ax = confusion_figure(confusion_counts(labels, labels, 100), names, "run: 100.00% test").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(0, 100, 10)]
    assert len(ax.get_yticklabels()) == 10 and len(ax.texts) == 0  # no per-cell numbers either
