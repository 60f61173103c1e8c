"""Retry a command whose append lost an optimistic-concurrency race."""

from __future__ import annotations

import random
import time

from django.db import connections

from ...conf import es_settings
from ...exceptions import ConcurrencyError
from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next


class RetryMiddleware(Middleware):
    """Re-run the whole command (a fresh transaction, fresh loads) on ConcurrencyError.

    Bounded by COMMAND_RETRY["ATTEMPTS"], with exponential backoff and full
    jitter so racing writers spread out. A conditional command (If-Match) is
    never retried: its client asked for one exact version. Nor is a command whose transaction
    must roll back (it ran without a savepoint inside its caller's): the caller retries, if anyone.
    """

    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        options = es_settings.COMMAND_RETRY
        attempts, base_delay = options["ATTEMPTS"], options["BASE_DELAY"]
        for attempt in range(1, attempts + 1):
            context.saved.clear()
            context.touched = None
            try:
                return next_(command, context)
            except ConcurrencyError:
                if (
                    context.expected_version is not None
                    or attempt == attempts
                    or connections[context.store.using].needs_rollback
                ):
                    raise
                time.sleep(random.uniform(0, base_delay * 2 ** (attempt - 1)))  # full jitter
        raise AssertionError("unreachable")  # pragma: no cover
