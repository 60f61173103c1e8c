"""The command bus: runs a command through the middleware chain to its handler."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from django.utils.module_loading import import_string

from ..conf import es_settings
from .base import Command, CommandContext, CommandResult
from .middleware import Middleware, Next
from .registry import CommandRegistry, command_registry

# The context of the command being dispatched in this thread (or asyncio task); nested dispatches stack.
_current_context: ContextVar[CommandContext | None] = ContextVar("eventsourcing_command_context", default=None)


def current_context() -> CommandContext | None:
    """The context of the command running now, or None outside a dispatch.

    Code a handler triggers without passing the context along (model signals,
    for the capture of ordinary models) reads the command's correlation,
    causation, user and tenant from it, so what it records joins the command's trail.
    """
    return _current_context.get()


class CommandBus:
    """Dispatches commands through `EVENTSOURCING["COMMAND_MIDDLEWARE"]`, outermost first.

    Each middleware entry is an import string, or a dict
    `{"class": "path.To.Middleware", "commands": ["PlaceOrder"], "options": {...}}`
    to pass options or limit it to some command types.
    """

    def __init__(self, registry: CommandRegistry | None = None, middleware: list[Any] | None = None) -> None:
        self.registry = registry or command_registry
        self._middleware_setting = middleware

    def dispatch(self, command: Command, context: CommandContext | None = None) -> CommandResult:
        context = context or CommandContext()
        registration = self.registry.lookup(command.command_type)

        def handle(cmd: Command, ctx: CommandContext) -> CommandResult:
            registration.handler(cmd, ctx)
            return ctx.result(cmd)

        chain: Next = handle
        for entry in reversed(self._middleware(command)):
            chain = _bind(entry, chain)
        token = _current_context.set(context)
        try:
            return chain(command, context)
        finally:
            _current_context.reset(token)

    def _middleware(self, command: Command) -> list[Middleware]:
        entries = self._middleware_setting
        if entries is None:
            entries = es_settings.COMMAND_MIDDLEWARE
        return [mw for mw, commands in _load(tuple(map(_freeze, entries))) if _applies(commands, command)]


def _bind(middleware: Middleware, next_: Next) -> Next:
    def call(command: Command, context: CommandContext) -> CommandResult:
        return middleware(command, context, next_)

    return call


def _applies(commands: frozenset[str] | None, command: Command) -> bool:
    return commands is None or command.command_type in commands


def _freeze(entry: Any) -> Any:
    if isinstance(entry, dict):
        options = tuple(sorted((entry.get("options") or {}).items()))
        commands = entry.get("commands")
        return (entry["class"], None if commands is None else frozenset(commands), options)
    return (entry, None, ())


_instances: dict[tuple, list[tuple[Middleware, frozenset[str] | None]]] = {}


def _load(entries: tuple) -> list[tuple[Middleware, frozenset[str] | None]]:
    """Middleware instances for a frozen setting, built once per distinct setting."""
    if entries not in _instances:
        _instances[entries] = [(import_string(path)(**dict(options)), commands) for path, commands, options in entries]
    return _instances[entries]


_default_bus: CommandBus | None = None


def dispatch(command: Command, context: CommandContext | None = None, **context_fields: Any) -> CommandResult:
    """Dispatch a command through the default bus.

    `context_fields` build a CommandContext when none is given, e.g.
    `dispatch(AddStock(sku="KETTLE", quantity=3), user=request.user)`.
    """
    global _default_bus  # noqa: PLW0603 (one bus per process, built on first use)
    if _default_bus is None:
        _default_bus = CommandBus()
    if context is None:
        context = CommandContext(**context_fields)
    return _default_bus.dispatch(command, context)
