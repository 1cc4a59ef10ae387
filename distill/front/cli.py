"""The `distill` command line (Typer). Training options are generated from the config dataclasses,
so every option has help text and the same name in TOML files and on the command line."""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Optional

import typer

try:  # typer >= 0.20 vendors click; older releases depend on it
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

from distill.front import config as C  # torch-free, like everything imported here: see training_command
from distill.front.app import app
from distill.errors import UserError

# typer >= 0.20 raises its own Exit/Abort; older releases raise click's.
EXIT_EXCEPTIONS = tuple({typer.Exit, getattr(click_exceptions, "Exit", typer.Exit)})
ABORT_EXCEPTIONS = tuple({typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)})

def bool_flags(name: str) -> str:
    """--x/--no-x, except that a name already saying no pairs as --no-teacher/--with-teacher (not --no-no-...)."""
    if name.startswith("no_"):
        return f"--{C.dash(name)}/--with-{C.dash(name[3:])}"
    return f"--{C.dash(name)}/--no-{C.dash(name)}"


def option_parameters(cls) -> list[inspect.Parameter]:
    """One keyword parameter per config field, all defaulting to None so we know what the user gave."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        kind = C.base_type(hints[f.name])
        decls = [bool_flags(f.name) if kind is bool else f"--{C.dash(f.name)}"]
        help_text = f.metadata["help"] + ("" if kind is bool or f.default is None else f"  [default: {f.default}]")
        option = typer.Option(None, *decls, help=help_text, show_default=False)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=Optional[kind]))
    return params


def saved_config(cls, cli_values: dict) -> dict:
    """With --resume, the run's own config.json is the base: `--out DIR --resume` is enough."""
    if not cli_values.get("resume"):
        return {}
    cfg = cls(**{k: v for k, v in cli_values.items() if v is not None})
    from distill.engine.folder import check_kind, default_out  # torch-free

    path = Path(cfg.out or default_out(cfg)) / "config.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}): restore it, or pass every option again with --force") from None
    # `teach` on a student's folder would read none of its student settings: refused before they are dropped (the
    # checkpoint's own role is checked again before training, with the student/baseline difference).
    kinds = ("teacher",) if issubclass(cls, C.TeachConfig) else ("student", "baseline")
    check_kind(path.parent, saved.get("role"), saved.get("method"), kinds)
    names = {f.name for f in dataclasses.fields(cls)} - set(C.NOT_COMPUTED)
    # A hand-edited config.json is checked like a config file: a wrong type is one line, not a traceback.
    return C.values_from_mapping(cls, {k: v for k, v in saved.items() if k in names and v is not None}, str(path))


def training_command(cls, name: str, summary: str):
    def command(**values):
        cfg = C.resolve(cls, values, saved_config(cls, values))
        C.check_paths(cfg)
        from distill.engine.folder import check_out

        check_out(cfg)  # --resume without last.pt (a mistyped --out), a folder holding a run, a live run's folder
        # Only now torch (5-25 s of imports): every name, value and path above was checked without it.
        from distill.engine.run import train_run

        train_run(cfg)

    params = option_parameters(cls)
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = summary
    app.command(name)(command)


training_command(C.TeachConfig, "teach", "Train a teacher (ResNet50 by default) on CIFAR-10 with GPU augmentation.")
training_command(C.StudentConfig, "student",
                 "Distill a teacher checkpoint into a small CIFAR ResNet, or train it alone (--no-teacher).")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    command = typer.main.get_command(app)
    if not argv:
        argv = ["--help"]
    try:
        command.main(args=argv, prog_name="distill", standalone_mode=False)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except click_exceptions.UsageError as err:
        where = f" (see `distill {err.ctx.info_name} --help`)" if err.ctx and err.ctx.parent else " (see `distill --help`)"
        print(f"error: {err.format_message()}{where}", file=sys.stderr)
        sys.exit(2)
    except EXIT_EXCEPTIONS as err:
        sys.exit(err.exit_code)
    except ABORT_EXCEPTIONS:
        sys.exit(130)


@app.command("evaluate")
def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="best.pt or last.pt of a distill run."),
    data: Optional[str] = typer.Option(None, help="Data to test on (default: the data the run was trained on)."),
    limit_test: Optional[int] = typer.Option(None, help="Class-balanced subset of this many test images."),
    tta: bool = typer.Option(False, "--tta/--no-tta", help="Average predictions over the image and its mirror."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    cache_dir: Optional[str] = typer.Option(None, help="Cache folder for decoded data (default ~/.cache/distill)."),
) -> None:
    """Test accuracy and per-class accuracy of a checkpoint."""
    if limit_test is not None:
        C.AT_LEAST_1.check("limit_test", limit_test)
    from distill.front.deploy import require_checkpoint  # the words predict and export use

    require_checkpoint(checkpoint)
    C.check_data(data, download=None)
    C.check_cache_dir(cache_dir)
    # Only now torch: the options and paths above were checked without it.
    from distill.engine.device import resolve_device
    from distill.engine.evaluate import evaluate_checkpoint
    from distill.models.table import print_evaluation

    if data is None:  # the user did not choose the data: say which it is before decoding it
        data, dataset = trained_on(checkpoint)
        where = data or f"official {dataset} from $DISTILL_DATA or the cache folder"
        print(f"data: {where} (what {checkpoint} was trained on; --data chooses other data)",
              file=sys.stderr if json_out else sys.stdout)
    result = evaluate_checkpoint(checkpoint, data, limit_test, tta, resolve_device(device),
                                 Path(cache_dir) if cache_dir else None)
    print(json.dumps(result)) if json_out else print_evaluation(result)


def trained_on(checkpoint: Path) -> tuple[str | None, str]:
    """The --data a checkpoint's run was trained on (None: the official download) and its --dataset (runs from
    before there was a choice: the default)."""
    from distill.engine.checkpoint import load_checkpoint

    config = load_checkpoint(checkpoint)["config"]
    return config.get("data"), config.get("dataset", C.TrainConfig.dataset)


@app.command("models")
def models_command(
    image_size: int = typer.Option(32, help="Input side length used to count GFLOPs."),
    num_classes: int = typer.Option(10, help="Classes of the head (changes parameter counts slightly)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Every teacher and student, smallest first: parameters and forward GFLOPs per image."""
    C.Range(C.MIN_IMAGE_SIZE).check("image_size", image_size)  # the sizes training accepts
    C.Range(2).check("num_classes", num_classes)  # with one class the softmax is a constant
    from distill.models.table import model_table, print_models

    rows = model_table(image_size, num_classes)
    print(json.dumps(rows)) if json_out else print_models(rows, image_size)


# The command modules register on `app` (from distill.front.app, so no import cycle) when imported; imported
# last so that `distill --help` lists teach, student, evaluate and models first.
from distill.front import bench, deploy, experiments  # noqa: E402,F401
