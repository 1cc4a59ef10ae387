"""`distill compare` and `distill pipeline`: whole experiments (registered on distill.front.cli.app).

Torch-free, like front/cli.py: a missing folder, a pipeline file that is missing, not TOML or names an
unknown key or a bad value, is answered here before torch is imported; the work is done in distill/experiments/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distill.front.app import app
from distill.errors import UserError


@app.command("compare")
def compare_command(
    runs_dir: Path = typer.Argument(..., help="Folder searched recursively for runs (folders with metrics.json)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object {\"runs\": [...], \"aggregates\": "
                                  "[...], \"notes\": [...], \"chart\": path, ...}."),
    wide: bool = typer.Option(False, "--wide", help="Every column (role, arch, seed, GFLOPs, McNemar p, KL, time, "
                              "...), not only the key ones that fit 80 characters."),
) -> None:
    """Every finished run side by side: accuracy, gain over the baseline with its 95% interval and McNemar p,
    agreement with the teacher, seeds aggregated; writes compare*.png and a TensorBoard summary."""
    if not runs_dir.is_dir():  # the same words as compare.find_runs, which says it after torch is imported
        raise UserError(f"{runs_dir} is not a folder: give the folder that holds your runs, e.g. runs/cifar10")
    from distill.experiments.compare import compare, print_comparison

    result = compare(runs_dir)
    print(json.dumps(result)) if json_out else print_comparison(result, wide=wide)


@app.command("pipeline")
def pipeline_command(
    config: Path = typer.Option(..., "--config", help="Pipeline TOML: [common], [teacher], [[students]], baselines."),
    data: Optional[str] = typer.Option(None, help="Data for every stage (overrides the file)."),
    out: Optional[str] = typer.Option(None, help="Folder for the stage runs (default runs/<config file stem>)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N for every stage (overrides the file)."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-epoch output; stage lines and the table only."),
    assignments: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="An option for every stage, over "
                                          "the file (repeatable; TOML values): --set compile=false --set epochs=2."),
) -> None:
    """Teacher, students, baselines and the comparison in one resumable command: rerun it to continue."""
    from distill.front.config import parse_assignments
    from distill.experiments.plan import check_data_paths, load_pipeline

    given = {"data": data, "device": device, "quiet": quiet or None}
    sets = parse_assignments(assignments, "--set")
    plan = load_pipeline(config, {k: v for k, v in given.items() if v is not None}, out, sets)
    check_data_paths(plan)
    # Only now torch: the file, every stage's options and data paths were checked without it.
    from distill.experiments.pipeline import run_pipeline

    run_pipeline(plan)
