"""Tables for the terminal (rich) and their JSON twins."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from distill import students, teachers
from distill.text import percent
from distill.models.info import describe
from distill.models import build_model, make_spec


def model_table(image_size: int, num_classes: int) -> list[dict]:
    """Teachers, then students, each family smallest first (by parameters): by name resnet110 sorts before
    resnet14."""
    rows = []
    for family, names in (("teacher", teachers.TEACHERS.list()), ("student", students.STUDENTS.list())):
        described = [describe(name, build_model(make_spec(name, num_classes, image_size)), image_size)
                     for name in names]
        rows += [{"family": family, **d} for d in sorted(described, key=lambda d: d["params"])]
    return rows


def print_models(rows: list[dict], image_size: int) -> None:
    table = Table(title=f"models (GFLOPs: one forward pass of a {image_size}x{image_size} image, 2 per multiply-add)")
    for col in ("family", "name", "params (M)", "GFLOPs"):
        table.add_column(col, justify="right" if col[0] in "pG" else "left")
    for r in rows:
        table.add_row(r["family"], r["name"], f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.3f}")
    Console().print(table)


def print_evaluation(result: dict) -> None:
    """Accuracies as percentages, like `distill compare`. The checkpoint's path goes on a line of its own that
    the terminal wraps: a table title would be broken mid-path by rich, where it can no longer be copied."""
    console = Console(highlight=False, markup=False)  # class names are text, not rich markup
    console.print(f"{result['checkpoint']} ({result['arch']}) on {result['test_images']} test images", soft_wrap=True)
    table = Table()
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in result["per_class"].items():
        table.add_row(name, percent(acc))
    table.add_row("all", percent(result["accuracy"]), style="bold")
    console.print(table)
