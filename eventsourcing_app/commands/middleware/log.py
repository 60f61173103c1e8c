"""One structured log line per command: type, duration, outcome, correlation id."""

from __future__ import annotations

import logging
import time

from ...exceptions import EventSourcingError
from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next

logger = logging.getLogger("eventsourcing_app.commands")


def outcome_of(error: BaseException | None) -> str:
    """A short label for how a command ended: ok, or the error's code."""
    if error is None:
        return "ok"
    return error.code if isinstance(error, EventSourcingError) else "error"


class LoggingMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return next_(command, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            logger.info(
                "command=%s outcome=%s duration_ms=%.1f correlation_id=%s command_id=%s",
                command.command_type,
                outcome_of(error),
                duration_ms,
                context.correlation_id,
                command.command_id,
                extra={
                    "command_type": command.command_type,
                    "outcome": outcome_of(error),
                    "duration_ms": round(duration_ms, 1),
                    "correlation_id": context.correlation_id,
                    "command_id": str(command.command_id),
                },
            )
