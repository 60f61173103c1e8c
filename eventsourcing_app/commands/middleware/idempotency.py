"""Idempotency-Key: a replay returns the stored result and appends nothing.

This middleware runs inside the command's transaction. It inserts the key's
record before the handler runs (INSERT … ON CONFLICT DO NOTHING: one round
trip, no savepoint) and completes it with the result before COMMIT. A
concurrent duplicate therefore waits, on the record's unique index
(PostgreSQL) or on the write lock (SQLite), until the first commits, and then
finds the stored result and replays it. If the first is still running when the
command's time limit ends the wait, the duplicate gets IdempotencyInProgressError.

A command run without a savepoint of its own inside its caller's transaction
(`CommandContext.savepoint = False`: the saga manager's first pass over a batch)
cannot undo its claim alone if it fails, so nothing is lost by claiming last:
one INSERT with the result, after the handler, instead of an INSERT and an
UPDATE. If the key turns out taken, its writes must not stand: it raises
IdempotencyKeyTakenError, the caller rolls back, and dispatching it again with a
savepoint claims first and replays the stored result.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from django.db import DatabaseError, connections
from django.utils import timezone

from ...conf import es_settings
from ...exceptions import IdempotencyConflictError, IdempotencyInProgressError
from ...models import IdempotencyRecord
from ...store.cursors import statement_cursor
from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next

# PostgreSQL: query_canceled (statement_timeout) and lock_not_available (lock_timeout).
WAIT_ENDED = frozenset({"57014", "55P03"})


class IdempotencyKeyTakenError(IdempotencyInProgressError):
    """A command that claimed its key last found it taken: roll back its writes and dispatch it again."""


def _sqlstate(error: DatabaseError) -> str | None:
    return getattr(error.__cause__, "sqlstate", None)


def request_hash(command: Command) -> str:
    """SHA-256 of the command type and its validated data, in a canonical JSON form."""
    body = json.dumps([command.command_type, command.data], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def scope_of(context: CommandContext) -> str:
    """Keys belong to a tenant and a user, so one user's key never replays another's result."""
    user = context.user
    user_part = str(user.pk) if user is not None and getattr(user, "is_authenticated", False) else "-"
    return f"{context.tenant_id or '-'}:{user_part}"


class IdempotencyMiddleware(Middleware):
    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        if not context.idempotency_key:
            return next_(command, context)
        fingerprint = request_hash(command)
        scope, using = scope_of(context), context.store.using
        if not context.savepoint and connections[using].in_atomic_block:
            result = next_(command, context)
            if self._claim(scope, context.idempotency_key, command, fingerprint, using, result=result) is None:
                raise IdempotencyKeyTakenError()
            return result
        record_id = self._claim(scope, context.idempotency_key, command, fingerprint, using)
        if record_id is None:
            records = IdempotencyRecord.objects.using(using).filter(scope=scope, key=context.idempotency_key)
            stored = self._replay(records, command, fingerprint)
            if stored is not None:
                return stored
            # The stored record had expired and is gone: the key is free again.
            record_id = self._claim(scope, context.idempotency_key, command, fingerprint, using)
            if record_id is None:
                raise IdempotencyInProgressError()
        result = next_(command, context)
        self._store_response(record_id, result, using)
        return result

    def _claim(
        self,
        scope: str,
        key: str,
        command: Command,
        fingerprint: str,
        using: str,
        *,
        result: CommandResult | None = None,
    ) -> int | None:
        """Insert the key's record (with the result, when claiming last); its id, or None when the key is taken.

        One statement: on PostgreSQL a concurrent duplicate's INSERT waits for the first
        command's transaction (SQLite's write lock makes it wait before), then finds the
        key taken and replays the stored result.
        """
        connection = connections[using]
        now = timezone.now()
        expires = now + timedelta(seconds=es_settings.IDEMPOTENCY_TTL)
        adapt = connection.ops.adapt_datetimefield_value
        response = IdempotencyRecord._meta.get_field("response")
        columns = "scope, key, command_type, request_hash, created_at, expires_at, " + connection.ops.quote_name(
            response.column
        )
        try:
            with statement_cursor(connection) as cursor:
                cursor.execute(
                    f"INSERT INTO {IdempotencyRecord._meta.db_table} ({columns})"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (scope, key) DO NOTHING RETURNING id",
                    [
                        scope,
                        key,
                        command.command_type,
                        fingerprint,
                        adapt(now),
                        adapt(expires),
                        None if result is None else response.get_db_prep_save(result.to_dict(), connection),
                    ],
                )
                row = cursor.fetchone()
        except DatabaseError as exc:
            if _sqlstate(exc) in WAIT_ENDED:
                # The wait for a duplicate outlasted the statement's time limit: it is still running.
                raise IdempotencyInProgressError() from exc
            raise
        return None if row is None else row[0]

    @staticmethod
    def _store_response(record_id: int, result: CommandResult, using: str) -> None:
        """One prepared UPDATE (the ORM's queryset update cost more to compile than to run)."""
        connection = connections[using]
        field = IdempotencyRecord._meta.get_field("response")
        with statement_cursor(connection) as cursor:
            cursor.execute(
                f"UPDATE {IdempotencyRecord._meta.db_table} SET {connection.ops.quote_name(field.column)} = %s"
                f" WHERE {IdempotencyRecord._meta.pk.column} = %s",
                [field.get_db_prep_save(result.to_dict(), connection), record_id],
            )

    def _replay(self, records, command: Command, fingerprint: str) -> CommandResult | None:
        """The stored result for this key, if a live one exists; an expired one is removed."""
        record = records.first()
        if record is None:
            return None
        if record.expires_at <= timezone.now():
            records.filter(pk=record.pk).delete()
            return None
        if record.request_hash != fingerprint:
            raise IdempotencyConflictError()
        return CommandResult.from_dict(command.command_type, record.response, replayed=True)
