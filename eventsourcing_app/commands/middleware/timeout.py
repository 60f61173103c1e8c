"""A time limit per command (EVENTSOURCING["COMMAND_TIMEOUT"] seconds).

Python cannot stop a running handler safely, so a command that finishes past
its deadline raises CommandTimeoutError inside its transaction, which rolls
the transaction back: nothing it did is kept. To also cancel a slow query
while it runs, give the database connection a statement timeout (on
PostgreSQL, `"OPTIONS": {"options": "-c statement_timeout=30s"}`, as the
example project does); a cancelled query ends the command the same way, and so
does a lock wait cut off by the connection's `lock_timeout`, if you set one.
Setting either per transaction would cost every command a round trip.
"""

from __future__ import annotations

import time

from django.db import OperationalError

from ...conf import es_settings
from ...exceptions import CommandTimeoutError
from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next

# PostgreSQL: query_canceled (statement_timeout) and lock_not_available (lock_timeout).
TIMED_OUT = frozenset({"57014", "55P03"})


class TimeoutMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        seconds = es_settings.COMMAND_TIMEOUT
        if not seconds:
            return next_(command, context)
        context.deadline = time.monotonic() + seconds
        try:
            result = next_(command, context)
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) in TIMED_OUT:
                raise CommandTimeoutError() from exc
            raise
        if time.monotonic() > context.deadline:
            raise CommandTimeoutError()
        return result
