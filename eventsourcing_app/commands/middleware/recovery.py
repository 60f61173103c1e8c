"""Turn an unexpected exception into CommandFailedError, logging its traceback server-side only."""

from __future__ import annotations

import logging

from ...exceptions import CommandFailedError, EventSourcingError
from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next

logger = logging.getLogger("eventsourcing_app.commands")


class RecoveryMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        try:
            return next_(command, context)
        except EventSourcingError:
            raise
        except Exception as exc:
            logger.exception(
                "command=%s failed unexpectedly correlation_id=%s command_id=%s",
                command.command_type,
                context.correlation_id,
                command.command_id,
            )
            raise CommandFailedError() from exc
