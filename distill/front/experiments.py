"""`distill compare`, `distill pipeline` and `distill transfer`: whole experiments (registered on
distill.front.cli.app).

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


DATA_OPTION = typer.Option(None, "--data", help="Data for every stage (overrides the file).")
OUT_OPTION = typer.Option(None, "--out", help="Folder for the stage runs (default runs/<config file stem>).")
DEVICE_OPTION = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N for every stage (overrides the file).")
QUIET_OPTION = typer.Option(False, "--quiet", help="No per-epoch output; stage lines and the table only.")
SET_OPTION = typer.Option([], "--set", metavar="KEY=VALUE", help="An option for every stage, over the file "
                          "(repeatable; TOML values): --set compile=false --set epochs=2.")


@app.command("pipeline")
def pipeline_command(
    config: Path = typer.Option(..., "--config", help="Pipeline TOML: [common], [teacher], [[students]], baselines."),
    data: Optional[str] = DATA_OPTION,
    out: Optional[str] = OUT_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
    assignments: list[str] = SET_OPTION,
) -> None:
    """Teacher, students, baselines and the comparison in one resumable command: rerun it to continue."""
    from distill.experiments.plan import load_pipeline

    run_plan(load_pipeline, config, data, out, device, quiet, assignments)


@app.command("transfer")
def transfer_command(
    config: Path = typer.Option(..., "--config", help="Transfer TOML: [common], [teacher], [pretrain], [target], "
                                "[transfers.NAME], [[students]] (see configs/transfer/)."),
    data: Optional[str] = DATA_OPTION,
    out: Optional[str] = OUT_OPTION,
    device: Optional[str] = DEVICE_OPTION,
    quiet: bool = QUIET_OPTION,
    assignments: list[str] = SET_OPTION,
) -> None:
    """Pretrain on some classes, transfer to others with few labels (from scratch, fine-tuned, LP-FT, ...), distil
    a transferred teacher, and compare: one resumable command, run as a pipeline."""
    from distill.experiments.transfer import load_transfer

    run_plan(load_transfer, config, data, out, device, quiet, assignments)


def run_plan(load, config: Path, data: str | None, out: str | None, device: str | None, quiet: bool,
             assignments: list[str]) -> None:
    """Read a pipeline's plan (`load`: a pipeline's or a transfer experiment's) and run it."""
    from distill.front.config import parse_assignments
    from distill.experiments.plan import check_data_paths

    given = {"data": data, "device": device, "quiet": quiet or None}
    sets = parse_assignments(assignments, "--set")
    plan = load(config, {k: v for k, v in given.items() if v is not None}, out, sets)
    check_data_paths(plan)
    # Only now torch: the file, every stage's options and data paths were checked without it.
    from distill.experiments.pipeline import run_pipeline

    run_pipeline(plan)
