"""One database transaction per command: its events, inline projections and outbox rows commit together."""

from __future__ import annotations

from django.db import transaction

from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next


class TransactionMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        with transaction.atomic(using=context.store.using, savepoint=context.savepoint):
            return next_(command, context)
