"""The `distill` app object, its version flag and -h: what every command module registers on.

Its own module so that distill/cli.py can import the command modules (cli_bench, cli_deploy,
cli_experiments) at the top like any import: they import `app` from here, not from cli.py.
"""

from __future__ import annotations

import importlib.metadata

import typer

app = typer.Typer(
    help="Knowledge distillation for PyTorch: train a strong CIFAR teacher, distill it into small students, "
    "compare them.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # subcommands inherit it: `distill teach -h`
)


def package_version() -> str:
    """The installed distribution's version; a source tree that was never installed has only __version__."""
    try:
        return importlib.metadata.version("distill")
    except importlib.metadata.PackageNotFoundError:
        from distill import __version__

        return __version__


def show_version(value: bool) -> None:
    if value:
        print(f"distill {package_version()}")
        raise typer.Exit()


@app.callback()
def root(version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    # No docstring: it would replace the app's help text.
    pass
