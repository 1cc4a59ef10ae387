"""`distill bench`: throughput of models and of the usual recipe (registered on distill.cli.app)."""

from distill.cli import app  # noqa: F401
