"""Tables for the terminal (rich) and their JSON twins."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

import students
import teachers
from distill.modelinfo import describe
from distill.models import build_model, make_spec


def model_table(image_size: int, num_classes: int) -> list[dict]:
    rows = []
    for family, names in (("teacher", teachers.TEACHERS.list()), ("student", students.STUDENTS.list())):
        for name in names:
            model = build_model(make_spec(name, num_classes, image_size))
            rows.append({"family": family, **describe(name, model, image_size)})
    return rows


def print_models(rows: list[dict], image_size: int) -> None:
    table = Table(title=f"models (GFLOPs: one forward pass of a {image_size}x{image_size} image, 2 per multiply-add)")
    for col in ("family", "name", "params (M)", "GFLOPs"):
        table.add_column(col, justify="right" if col[0] in "pG" else "left")
    for r in rows:
        table.add_row(r["family"], r["name"], f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.3f}")
    Console().print(table)


def print_evaluation(result: dict) -> None:
    table = Table(title=f"{result['checkpoint']} ({result['arch']}) on {result['test_images']} test images")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for name, acc in result["per_class"].items():
        table.add_row(name, f"{acc:.4f}")
    table.add_row("[bold]all[/bold]", f"[bold]{result['accuracy']:.4f}[/bold]")
    Console().print(table)
