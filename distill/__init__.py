"""distill: knowledge distillation and transfer learning for PyTorch."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


def package_version() -> str:
    """The installed distribution's version; a source tree that was never installed has only __version__."""
    import importlib.metadata

    try:
        return importlib.metadata.version("distill")
    except importlib.metadata.PackageNotFoundError:
        return __version__


# teachers/ and students/ sit at the top of the repository (the project's layout) and install as
# distill.teachers and distill.students (pyproject.toml maps them in). A source checkout imported without
# that mapping (`python -m distill` or `python -m pytest` from the repository root put the checkout's own
# distill/ first on sys.path, ahead of any installed copy) finds them beside it through this finder.
_HERE = Path(__file__).resolve().parent
_SIBLINGS = ("teachers", "students")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Resolves exactly distill.teachers and distill.students to the checkout's top-level folders."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, name = fullname.rpartition(".")
        if prefix != __name__ or name not in _SIBLINGS:
            return None
        folder = _HERE.parent / name
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def _is_checkout() -> bool:
    """This distill/ is a source checkout's (its siblings beside it, not inside it as in an installed copy)."""
    return (not any((_HERE / name).is_dir() for name in _SIBLINGS)
            and all((_HERE.parent / name / "__init__.py").is_file() for name in _SIBLINGS)
            and (_HERE.parent / "pyproject.toml").is_file())


if _is_checkout() and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _CheckoutFinder())  # ahead of an editable install's finder: this checkout's own
