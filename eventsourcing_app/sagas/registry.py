"""The registry of sagas, filled from each installed app's `sagas.py`."""

from __future__ import annotations

from typing import TypeVar

from ..exceptions import EventSourcingError
from ..registry import Registry
from .base import Saga
from .manager import SagaManager

S = TypeVar("S", bound=type[Saga])


class SagaNotFoundError(EventSourcingError):
    """A saga was asked for by a name no saga registered."""

    code = "saga_not_found"
    default_detail = "No saga is registered under this name."


class SagaRegistry(Registry[Saga]):
    kind = "Saga"

    def __init__(self) -> None:
        super().__init__()
        self._managers: dict[str, SagaManager] = {}
        self._interest: dict[frozenset[str], list[str]] = {}

    def lookup(self, name: str) -> Saga:
        saga = self.get(name)
        if saga is None:
            known = ", ".join(self.names()) or "none"
            raise SagaNotFoundError(f"Unknown saga {name!r}. Known sagas: {known}.")
        return saga

    def manager(self, name: str) -> SagaManager:
        """The manager of a saga (one per process, so its memoised lookups are kept)."""
        manager = self._managers.get(name)
        if manager is None or manager.saga is not self.get(name):
            manager = self._managers[name] = SagaManager(self.lookup(name))
        return manager

    def managers(self) -> list[SagaManager]:
        return [self.manager(name) for name in self.names()]

    def interested(self, event_types: set[str]) -> list[str]:
        """Names of the sagas that handle any of these event types (asked after every commit)."""
        key = frozenset(event_types)
        found = self._interest.get(key)
        if found is None:
            found = [name for name in self.names() if any(self._registry[name].handler_for(t) for t in key)]
            if len(self._interest) > 10_000:
                self._interest.clear()
            self._interest[key] = found
        return found

    def register(self, name: str, entry: Saga) -> Saga:
        self._interest.clear()
        return super().register(name, entry)

    def unregister(self, name: str) -> None:
        self._registry.pop(name, None)
        self._managers.pop(name, None)
        self._interest.clear()


saga_registry = SagaRegistry()


def register(saga_class: S) -> S:
    """Class decorator: register one instance of the saga under its name."""
    saga_registry.register(saga_class.name, saga_class())
    return saga_class
