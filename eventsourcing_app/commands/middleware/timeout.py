"""A time limit per command (EVENTSOURCING["COMMAND_TIMEOUT"] seconds).

Python cannot stop a running handler safely, so the limit is enforced where it
can be: on PostgreSQL a `statement_timeout` for the command's transaction
cancels a slow query, and on any database a command that finishes past its
deadline raises CommandTimeoutError inside the transaction, which rolls it back.
"""

from __future__ import annotations

import time

from django.db import OperationalError, connections

from ...conf import es_settings
from ...exceptions import CommandTimeoutError
from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next


class TimeoutMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        seconds = es_settings.COMMAND_TIMEOUT
        if not seconds:
            return next_(command, context)
        context.deadline = time.monotonic() + seconds
        connection = connections[context.store.using]
        if connection.vendor == "postgresql" and connection.in_atomic_block:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{int(seconds * 1000)}ms"])
        try:
            result = next_(command, context)
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) == "57014":  # query_canceled
                raise CommandTimeoutError() from exc
            raise
        if time.monotonic() > context.deadline:
            raise CommandTimeoutError()
        return result
