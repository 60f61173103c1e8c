"""Command middleware: callables `(command, context, next_) -> CommandResult`, chained by the bus.

The default chain (EVENTSOURCING["COMMAND_MIDDLEWARE"]), outermost first:
recovery → logging → metrics → correlation → tenant → validation → retry →
idempotency → transaction → timeout → handler. Retries wrap the transaction so
each attempt starts afresh; idempotency sits inside the retries and around the
transaction so a stored result is found before any work is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from ..base import Command, CommandContext, CommandResult

Next: TypeAlias = "Callable[[Command, CommandContext], CommandResult]"


class Middleware:
    """Base class: override `__call__`, and call `next_(command, context)` to go on."""

    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        raise NotImplementedError(".__call__() must be overridden.")


__all__ = ["Middleware", "Next"]
