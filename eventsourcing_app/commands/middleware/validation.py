"""Validate the command's data before anything else looks at it."""

from __future__ import annotations

from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next


class ValidationMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        command.validate()
        return next_(command, context)
