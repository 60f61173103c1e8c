"""One database transaction per command: its events, inline projections and outbox rows commit together."""

from __future__ import annotations

from django.db import connections, transaction

from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next


class TransactionMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        using = context.store.using
        if not context.savepoint and not connections[using].in_atomic_block:
            # No caller's transaction to join: the command's transaction is its own, and rolls back alone.
            context.savepoint = True
        with transaction.atomic(using=using, savepoint=context.savepoint):
            return next_(command, context)
