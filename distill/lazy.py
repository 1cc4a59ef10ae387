"""torch, imported on first use: method files read like ordinary torch code, yet importing them (to list
the methods and their options for the command line) costs nothing. The command line checks every name and
value before torch is imported, so a typo answers in a fraction of a second."""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for a module until an attribute is read; then imports it and forwards every access."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


torch = LazyModule("torch")
nn = LazyModule("torch.nn")
F = LazyModule("torch.nn.functional")
