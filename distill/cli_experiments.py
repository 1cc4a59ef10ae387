"""`distill compare` and `distill pipeline`: whole experiments (registered on distill.cli.app)."""

from distill.cli import app  # noqa: F401
