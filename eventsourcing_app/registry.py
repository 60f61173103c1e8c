"""A name → object registry that Django's `autodiscover_modules` can roll back."""

from __future__ import annotations

from typing import Generic, TypeVar

from .exceptions import AlreadyRegisteredError

T = TypeVar("T")


class Registry(Generic[T]):
    """Keeps entries in `_registry` so a failed discovery import can be undone."""

    kind = "entry"

    def __init__(self) -> None:
        self._registry: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        existing = self._registry.get(name)
        if existing is not None and existing is not entry:
            raise AlreadyRegisteredError(f"{self.kind} {name!r} is already registered as {existing!r}.")
        self._registry[name] = entry
        return entry

    def get(self, name: str) -> T | None:
        return self._registry.get(name)

    def names(self) -> list[str]:
        return sorted(self._registry)

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __len__(self) -> int:
        return len(self._registry)
