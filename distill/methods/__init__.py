"""The distillation methods, by name: one file each in this folder, registered with `@register`.

Adding a method is one file here (plus its test): a `Method` subclass with its `Options`, its `loss` and, if
it keeps modules of its own, `setup`. The folder is scanned at import, so no line here names it. Nothing here
imports torch (distill.lazy), so the command line can list methods and check their options before torch is
imported.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing

from distill.errors import UserError
from distill.methods.base import Batch, Method, Outputs, TrainingSet, soft_cross_entropy

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: adds a method under its `name`."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"method {cls.__name__} needs a name no other method has, got {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown --method '{name}': choose one of {', '.join(METHODS)}")
    return METHODS[name]


def all_option_names() -> tuple[str, ...]:
    """Every method option, each once, in the order methods declare them."""
    return tuple(dict.fromkeys(f.name for cls in METHODS.values() for f in dataclasses.fields(cls.Options)))


def resolve_options(name: str, given: dict) -> object:
    """The method's Options from the values a user gave (None: the method's default), each checked
    against the method's own range; an option the method does not take is refused."""
    cls = method_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = [k for k, v in given.items() if v is not None and k not in fields]
    if unknown:
        takes = ", ".join(f"--{k.replace('_', '-')}" for k in fields) or "no options"
        raise UserError(f"--{unknown[0].replace('_', '-')} does not apply to --method {name} (it takes {takes})")
    values = {k: given[k] for k in fields if given.get(k) is not None}
    for key, value in values.items():
        if fields[key].metadata.get("range") is not None:
            fields[key].metadata["range"].check(key, value)
    return cls.Options(**values)


def create(name: str, options: dict | None = None, label_smoothing: float = 0.0) -> Method:
    """The method `name` with the given option values (unset ones at the method's defaults)."""
    return method_class(name)(resolve_options(name, options or {}), label_smoothing)


def option_type(name: str) -> type:
    """An option's type (the same in every method that declares it)."""
    for cls in METHODS.values():
        hints = typing.get_type_hints(cls.Options)
        if name in hints:
            return hints[name]
    raise KeyError(name)


def discover() -> None:
    """Import every module of this folder (each registers its method), then order the methods as --method
    lists them: the baseline, plain KD, then the others by name."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    order = sorted(METHODS, key=lambda name: (name != "none", name != "kd", name))
    METHODS.update({name: METHODS.pop(name) for name in order})


discover()

__all__ = ["METHODS", "Batch", "Method", "Outputs", "TrainingSet", "create", "method_names", "method_class", "register",
           "resolve_options", "all_option_names", "soft_cross_entropy"]
