"""`distill compare`: every finished run under a folder side by side, with the uncertainty of each gain.

The two entry points the command line and the pipeline call: `compare` reads the runs (runs.py), links them
(links.py: gains over the baseline, fidelity to the teacher, seed aggregates) and writes the charts and the
TensorBoard summary (outputs.py); `print_comparison` prints its result as tables (tables.py).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console

from distill.experiments.links import aggregate, link_runs, seed_groups, weak_teacher_notes
from distill.experiments.outputs import ACCURACY_TAG, CHART_TAG, SUMMARY_TAG, write_charts
from distill.experiments.runs import Predictions, read_runs, sort_key
from distill.experiments.tables import (by_experiment, fitted_table, markdown_summary, output_width, print_table, say,
                                        seeds_table, unbroken, verdict)

# What callers read from here besides the entry points: the TensorBoard tags and summary compare writes.
__all__ = ["compare", "print_comparison", "markdown_summary", "CHART_TAG", "ACCURACY_TAG", "SUMMARY_TAG"]


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
