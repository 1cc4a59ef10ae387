"""The confusion matrix of a run's test predictions, as counts and as a PNG for TensorBoard's IMAGES tab."""

from __future__ import annotations

import io

import torch

# TensorBoard shows an image shrunk to its card, about 320 px wide in a 1400 px window: the figure is drawn
# small (500 px) with large type, so that its text stays about 11 px tall there (7 px at 1000 px wide).
WIDTH, HEIGHT, DPI = 500, 480, 100
NUMBERS, LABELS = 12, 12  # points: 10.7 px tall on the card
MAX_NUMBERED = 12  # classes: beyond this the cells are too small for their numbers
MAX_NAMED = 20  # classes: beyond this (CIFAR-100) the names would overlap; the axes show every 10th index


def confusion_counts(labels: torch.Tensor, top1: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts, (C, C) int64: one bincount over pair indices."""
    pairs = labels.long().cpu() * num_classes + top1.long().cpu()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_figure(counts: torch.Tensor, classes: list[str], title: str):
    """Rows: true class; columns: predicted class; each cell the share of its row in percent (the per-class
    recall on the diagonal), written in the cell up to MAX_NUMBERED classes. A matplotlib Figure on an Agg
    canvas (no pyplot: no GUI backend needed, none switched under a notebook)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(classes)
    shares = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
    fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.set_facecolor("white")
    ax = fig.add_subplot()
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= MAX_NAMED:
        ax.set_xticks(range(n), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=LABELS)
        ax.set_yticks(range(n), classes, fontsize=LABELS)
    else:  # class indices (the order of metrics.json's per-class accuracies), every 10th
        indices = range(0, n, 10)
        ax.set_xticks(indices, [str(i) for i in indices], fontsize=LABELS)
        ax.set_yticks(indices, [str(i) for i in indices], fontsize=LABELS)
    ax.set_xlabel("predicted", fontsize=LABELS)
    ax.set_ylabel("true class (cells: % of the row)", fontsize=LABELS)
    ax.set_title(title, fontsize=LABELS + 1)
    size = NUMBERS if n <= 10 else NUMBERS - 2  # 11 or 12 classes: smaller cells
    if n <= MAX_NUMBERED:
        for (i, j), share in zip(((i, j) for i in range(n) for j in range(n)), shares.flatten().tolist()):
            ax.text(j, i, f"{100 * share:.0f}", ha="center", va="center", fontsize=size,
                    color="white" if share > 0.5 else "black")
    return fig


def confusion_png(counts: torch.Tensor, classes: list[str], title: str) -> bytes:
    buffer = io.BytesIO()
    confusion_figure(counts, classes, title).savefig(buffer, format="png")
    return buffer.getvalue()
