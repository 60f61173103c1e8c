"""Command types and their handlers, discovered from each installed app's `commands.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..exceptions import UnknownCommandError
from ..registry import Registry
from .base import Command, CommandContext

C = TypeVar("C", bound=Command)
Handler = Callable[[Any, CommandContext], Any]


@dataclass(frozen=True)
class Registration:
    command_class: type[Command]
    handler: Handler

    @property
    def permission_codename(self) -> str:
        return permission_codename(self.command_class.command_type)


class CommandRegistry(Registry[Registration]):
    kind = "Command type"

    def lookup(self, command_type: str) -> Registration:
        registration = self.get(command_type)
        if registration is None:
            raise UnknownCommandError(f"Unknown command type {command_type!r}.")
        return registration

    def registrations(self) -> list[Registration]:
        return [self._registry[name] for name in self.names()]


command_registry = CommandRegistry()


def handles(
    command_class: type[C],
) -> Callable[[Callable[[C, CommandContext], Any]], Callable[[C, CommandContext], Any]]:
    """Register the decorated function as the handler of `command_class`.

    The handler loads aggregates with `context.load()`, calls their methods, and
    saves them with `context.save()`, which stamps the command's metadata on
    every event. Raise `CommandRejectedError` when a domain rule refuses.
    """

    def register(handler: Callable[[C, CommandContext], Any]) -> Callable[[C, CommandContext], Any]:
        command_registry.register(command_class.command_type, Registration(command_class, handler))
        return handler

    return register


def permission_codename(command_type: str) -> str:
    """The Django permission `eventsourcing_app.<codename>` needed to dispatch a command type."""
    return f"dispatch_{command_type.lower()}"
