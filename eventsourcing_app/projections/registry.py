"""The registry of projections, filled from each installed app's `projections.py`."""

from __future__ import annotations

from typing import TypeVar

from ..exceptions import ProjectionNotFoundError
from ..registry import Registry
from .base import ASYNC, INLINE, LIVE, Projection

P = TypeVar("P", bound=type[Projection])


class ProjectionRegistry(Registry[Projection]):
    kind = "Projection"

    def __init__(self) -> None:
        super().__init__()
        self._interest: dict[tuple, list[Projection]] = {}

    def lookup(self, name: str) -> Projection:
        projection = self.get(name)
        if projection is None:
            known = ", ".join(self.names()) or "none"
            raise ProjectionNotFoundError(f"Unknown projection {name!r}. Known projections: {known}.")
        return projection

    def of_kind(self, kind: str) -> list[Projection]:
        return [self._registry[name] for name in self.names() if self._registry[name].kind == kind]

    def interested(self, kind: str, event_types: frozenset[str]) -> list[Projection]:
        """Projections of a kind that want any of these event types; memoised, as every append asks."""
        key = (kind, event_types)
        found = self._interest.get(key)
        if found is None:
            found = [p for p in self.of_kind(kind) if any(p.wants(t) for t in event_types)]
            if len(self._interest) > 10_000:
                self._interest.clear()
            self._interest[key] = found
        return found

    def register(self, name: str, entry: Projection) -> Projection:
        self._interest.clear()
        return super().register(name, entry)

    def unregister(self, name: str) -> None:
        self._interest.clear()
        self._registry.pop(name, None)


projection_registry = ProjectionRegistry()


def register(projection_class: P) -> P:
    """Class decorator: register one instance of the projection under its name."""
    projection_registry.register(projection_class.name, projection_class())
    return projection_class


__all__ = ["ASYNC", "INLINE", "LIVE", "ProjectionRegistry", "projection_registry", "register"]
