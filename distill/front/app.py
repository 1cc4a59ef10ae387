"""The `distill` app object, its version flag and -h: what every command module registers on.

Its own module so that front/cli.py can import the command modules (front/bench.py, front/deploy.py,
front/experiments.py) at the top like any import: they import `app` from here, not from cli.py.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from distill import package_version

# What `distill --help` lists for each command: one sentence that fits the list at 80 columns. Click would cut
# a docstring's first sentence at the terminal's width with "..."; these are never cut (a narrower terminal
# wraps them). `distill COMMAND --help` shows the command's whole docstring.
SUMMARIES = {
    "teach": "Train a teacher on CIFAR-10 (ResNet50 by default).",
    "student": "Distill a teacher into a small student, or train a baseline.",
    "evaluate": "Test accuracy and per-class accuracy of a checkpoint.",
    "models": "List every model's parameters and GFLOPs, smallest first.",
    "bench": "Time training, inference and distillation in images/second.",
    "predict": "Classify images with a trained checkpoint.",
    "export": "Write a checkpoint as an ONNX, TorchScript or .pt2 model.",
    "compare": "Compare finished runs: accuracy, gains, intervals, charts.",
    "pipeline": "Run teacher, students, baselines and comparison in one go.",
    "transfer": "Pretrain, transfer to new classes, distil, compare in one go.",
}


class Commands(TyperGroup):
    """distill's commands, each listed in `distill --help` by its SUMMARIES line."""

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        if command is not None and cmd_name in SUMMARIES:
            command.short_help = SUMMARIES[cmd_name]
        return command


app = typer.Typer(
    cls=Commands,
    help="Knowledge distillation for PyTorch: train a strong CIFAR teacher, distill it into small students, "
    "compare them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # subcommands inherit it: `distill teach -h`
)


def show_version(value: bool) -> None:
    if value:
        print(f"distill {package_version()}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    # No docstring: it would replace the app's help text.
    pass
