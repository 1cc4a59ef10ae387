"""A tiny name -> constructor registry (timm style), shared by the model families: teachers (TEACHERS) and
students (STUDENTS), each checked against the names the command line declares. Methods keep their own
`METHODS` dict (distill/methods/__init__.py): they register classes with options, not constructors."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from distill.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, declared: tuple[str, ...] | None = None):
        self.kind = kind  # used in error messages: "unknown student arch 'x'"
        # The names the command line accepts before torch is imported (distill/front/names.py): a constructor
        # registered under any other name would be unreachable from the CLI, so it is refused here.
        self.declared = declared
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None):
        """Decorator: `@REGISTRY.register()` adds a constructor under its function name."""

        def add(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            if self.declared is not None and key not in self.declared:
                raise ValueError(f"{self.kind} '{key}' is not declared in distill/front/names.py: add it there too")
            self._entries[key] = fn
            return fn

        return add

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} '{name}': choose one of {', '.join(self.list())}")
        return self._entries[name]

    def list(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
