"""`distill compare`: every finished run under a folder side by side.

A run is any folder holding a metrics.json (written last by `train_run`, so it marks a finished run).
The comparison is a table (or JSON), a chart `compare.png` beside the runs, and the same chart as a
TensorBoard image in `<runs>/compare/`, a folder of its own so no run's event file is touched.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

from PIL import Image
from rich.console import Console
from rich.table import Table

from distill.chart import Point, accuracy_chart
from distill.checkpoint import write_atomic
from distill.errors import UserError

FIELDS = ("role", "arch", "method", "params", "gflops", "test_accuracy", "best_val_accuracy", "epochs",
          "wall_seconds", "train_images_per_second")
ROLE_RANK = {"teacher": 0, "baseline": 1, "student": 2}  # a baseline sits right above its students
CHART_FILE = "compare.png"
EVENTS_FOLDER = "compare"
CHART_TAG = "compare/accuracy_vs_params"


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


def read_run(folder: Path, root: Path) -> dict:
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError(f"a JSON {type(metrics).__name__}, not an object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"cannot read {path} ({exc}): delete that run folder or rerun it") from None
    name = folder.relative_to(root).as_posix()
    row = {"name": folder.name if name == "." else name, "path": str(folder)}
    return row | {key: finite(metrics.get(key)) for key in FIELDS}


def experiment(row: dict) -> str:
    return str(Path(row["path"]).parent)


def add_gains(rows: list[dict]) -> list[dict]:
    """Student minus baseline test accuracy, in percentage points, for the baseline of the same arch in
    the same experiment folder (runs of another experiment may use another recipe or data)."""
    baselines = {(experiment(r), r["arch"]): r["test_accuracy"] for r in rows if r["role"] == "baseline"}
    for r in rows:
        base = baselines.get((experiment(r), r["arch"])) if r["role"] == "student" else None
        known = base is not None and r["test_accuracy"] is not None
        r["gain_over_baseline"] = round(100 * (r["test_accuracy"] - base), 4) if known else None
    return rows


def sort_key(row: dict) -> tuple:
    """Per experiment: the teacher first, then by arch, each baseline before its students."""
    role = row["role"] or ""
    return (experiment(row), role != "teacher", row["arch"] or "", ROLE_RANK.get(role, 3), row["method"] or "",
            row["name"])


def log_chart(image: Image.Image, root: Path) -> None:
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter  # slow import: only once there is a chart

    folder = root / EVENTS_FOLDER
    # The chart is a snapshot of the runs as they are now: replace the last one instead of stacking them.
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    with SummaryWriter(str(folder)) as writer:
        writer.add_image(CHART_TAG, np.asarray(image), 0, dataformats="HWC")


def write_chart(rows: list[dict], root: Path) -> Path:
    points = [Point(r["name"], r["params"] or 0, 100 * r["test_accuracy"], r["role"] or "?")
              for r in rows if r["test_accuracy"] is not None]
    image = accuracy_chart(points, f"test accuracy vs parameters: {root}")
    path = root / CHART_FILE
    write_atomic(path, lambda fh: image.save(fh, format="PNG"))
    log_chart(image, root)
    return path


def compare(root: Path) -> dict:
    """All runs under `root` with their gains; writes the chart. Returns {"runs": [...], "chart": path}."""
    root = Path(root)
    rows = sorted(add_gains([read_run(folder, root) for folder in find_runs(root)]), key=sort_key)
    return {"runs": rows, "chart": str(write_chart(rows, root))}


def shown(fmt: Callable[[float], str]) -> Callable[[object], str]:
    return lambda value: "-" if value is None else fmt(value)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s" if seconds >= 60 else f"{seconds:.1f}s"


# (header, field, formatter): one place decides how every column looks.
COLUMNS: list[tuple[str, str, Callable[[object], str]]] = [
    ("run", "name", str),
    ("role", "role", shown(str)),
    ("arch", "arch", shown(str)),
    ("method", "method", shown(str)),
    ("params (M)", "params", shown(lambda v: f"{v / 1e6:.2f}")),
    ("GFLOPs", "gflops", shown(lambda v: f"{v:.3f}")),
    ("test acc", "test_accuracy", shown(lambda v: f"{100 * v:.2f}%")),
    ("best val", "best_val_accuracy", shown(lambda v: f"{100 * v:.2f}%")),
    ("gain (pp)", "gain_over_baseline", shown(lambda v: f"{v:+.2f}")),
    ("epochs", "epochs", shown(str)),
    ("wall time", "wall_seconds", shown(minutes)),
    ("img/s", "train_images_per_second", shown(lambda v: f"{v:,.0f}")),
]


def print_comparison(result: dict) -> None:
    table = Table(title="runs (gain: test accuracy over the baseline of the same arch, in points)")
    for header, _, _ in COLUMNS:
        table.add_column(header, justify="left" if header in ("run", "role", "arch", "method") else "right")
    for row in result["runs"]:
        table.add_row(*(fmt(row[key]) for _, key, fmt in COLUMNS))
    # Piped into a file or a log, rich would squeeze 12 columns into 80 characters and cut every value.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    console.print(table)
    console.print(f"chart: {result['chart']} (and in TensorBoard under {CHART_TAG})")
