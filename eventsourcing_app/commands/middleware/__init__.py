"""Command middleware: callables `(command, context, next_) -> CommandResult`, chained by the bus.

The default chain (EVENTSOURCING["COMMAND_MIDDLEWARE"]), outermost first:
recovery → logging → metrics → correlation → tenant → validation → retry →
transaction → timeout → idempotency → handler. Retries wrap the transaction so
each attempt starts afresh; idempotency runs inside the transaction, so its
record commits (or rolls back) with the command's events, and a stored result
is found before the handler runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from ...exceptions import EventSourcingError

if TYPE_CHECKING:
    from ..base import Command, CommandContext, CommandResult

Next: TypeAlias = "Callable[[Command, CommandContext], CommandResult]"


def outcome_of(error: BaseException | None) -> str:
    """A short label for how a command ended: ok, or the error's code."""
    if error is None:
        return "ok"
    return error.code if isinstance(error, EventSourcingError) else "error"


def measured(
    command: Command, context: CommandContext, next_: Next, report: Callable[[str, float], None]
) -> CommandResult:
    """Run the rest of the chain and `report(outcome, seconds)` however it ends (for logs and metrics)."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        return next_(command, context)
    except BaseException as exc:
        error = exc
        raise
    finally:
        report(outcome_of(error), time.perf_counter() - started)


class Middleware:
    """Base class: override `__call__`, and call `next_(command, context)` to go on."""

    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        raise NotImplementedError(".__call__() must be overridden.")


__all__ = ["Middleware", "Next", "measured", "outcome_of"]
