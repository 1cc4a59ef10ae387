"""How `distill compare` reads on the terminal and in TensorBoard's text tab: the runs table (its key columns
fit 80 characters; --wide adds the rest, less what the terminal's width cannot hold), a sentence per student
gain, the seeds table, and text wrapped without breaking a path.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Callable, NamedTuple

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.segment import Segment, Segments
from rich.table import Table

from distill.engine.checkpoint import PREDICTIONS_FILE
from distill.experiments.runs import shown_experiment
from distill.text import minutes, percent

SIGNIFICANCE = 0.05


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
