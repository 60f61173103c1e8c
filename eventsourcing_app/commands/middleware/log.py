"""One structured log line per command: type, duration, outcome, correlation id."""

from __future__ import annotations

import logging

from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next, measured

logger = logging.getLogger("eventsourcing_app.commands")


class LoggingMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        def log(outcome: str, seconds: float) -> None:
            duration_ms = round(seconds * 1000, 1)
            logger.info(
                "command=%s outcome=%s duration_ms=%.1f correlation_id=%s command_id=%s",
                command.command_type,
                outcome,
                duration_ms,
                context.correlation_id,
                command.command_id,
                extra={
                    "command_type": command.command_type,
                    "outcome": outcome,
                    "duration_ms": duration_ms,
                    "correlation_id": context.correlation_id,
                    "command_id": str(command.command_id),
                },
            )

        return measured(command, context, next_, log)
