"""Correlation and causation ids: every event a command raises carries both."""

from __future__ import annotations

import uuid

from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next


class CorrelationMiddleware(Middleware):
    """A new correlation id unless one came with the request; causation is the command itself.

    Saga-issued commands arrive with the saga's correlation id and the
    triggering event as causation, and keep them.
    """

    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        if not context.correlation_id:
            context.correlation_id = str(uuid.uuid4())
        if not context.causation_id:
            context.causation_id = str(command.command_id)
        return next_(command, context)
