"""Name -> class registries for the pluggable parts of a run (samplers, augmentations).

Each family keeps one Registry; its classes register under the name a config uses, with
a decorator, from their own modules, and the family's package imports those modules so
the registry is complete once the package is imported. Plain Python (no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from engine.errors import BadInput

T = TypeVar("T", bound=type)


class Registry(Mapping[str, T]):
    """The classes of one family by name, in registration order.

    A read-only mapping (iterate, `in`, `[name]`) plus `register`, `lookup` and `names`.
    `kind` names the family in the error for an unknown name ("unknown sampler 'x'").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: file the class under `name` and set its `name` attribute.
        Two classes under one name would make a config ambiguous, so that is refused."""

        def decorate(cls: T) -> T:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._classes[name].__qualname__})")
            cls.name = name
            self._classes[name] = cls
            return cls

        return decorate

    def unregister(self, name: str) -> None:
        """Forget `name` (for throwaway classes registered by tests)."""
        del self._classes[name]

    def lookup(self, name: str) -> T:
        """The class registered as `name`; BadInput listing the valid names otherwise."""
        if name not in self._classes:
            raise BadInput(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self._classes)}")
        return self._classes[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def __getitem__(self, name: str) -> T:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)
