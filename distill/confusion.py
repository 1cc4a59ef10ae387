"""The confusion matrix of a run's test predictions, as counts and as a PNG for TensorBoard's IMAGES tab."""

from __future__ import annotations

import io

import torch


def confusion_counts(labels: torch.Tensor, top1: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts, (C, C) int64: one bincount over pair indices."""
    pairs = labels.long().cpu() * num_classes + top1.long().cpu()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_png(counts: torch.Tensor, classes: list[str], title: str) -> bytes:
    """Rows: true class; columns: predicted class; each cell the share of its row (the per-class recall on the
    diagonal), written in the cell. Large type: TensorBoard shows the image shrunk to its card's width."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to memory
    import matplotlib.pyplot as plt

    n = len(classes)
    shares = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(10, 9), dpi=100)
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=18)
    ax.set_yticks(range(n), classes, fontsize=18)
    ax.set_xlabel("predicted", fontsize=20)
    ax.set_ylabel("true (cells: % of the row)", fontsize=20)
    ax.set_title(title, fontsize=22)
    if n <= 12:  # the numbers stay legible up to about a dozen classes
        for (i, j), share in zip(((i, j) for i in range(n) for j in range(n)), shares.flatten().tolist()):
            ax.text(j, i, f"{100 * share:.0f}", ha="center", va="center", fontsize=16,
                    color="white" if share > 0.5 else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
