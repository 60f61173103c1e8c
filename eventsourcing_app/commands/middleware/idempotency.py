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
savepoint claims first and replays the stored result. A caller running many
such commands can go further and hand them one `DeferredClaims`: their records
are then inserted together (one pipelined executemany: one round trip) before its COMMIT.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

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
            claims = context.deferred_claims
            if claims is not None and claims.using != using:
                raise ValueError(f"deferred_claims are claimed on {claims.using!r}; this command writes to {using!r}.")
            result = next_(command, context)
            if claims is not None:
                claims.add(scope, context.idempotency_key, command, fingerprint, result)
            elif self._claim(scope, context.idempotency_key, command, fingerprint, using, result=result) is None:
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
        with _waiting_for_duplicates(), statement_cursor(connection) as cursor:
            cursor.execute(
                f"{_insert_statement(connection)} RETURNING id",
                _record_row(connection, scope, key, command, fingerprint, result=result),
            )
            row = cursor.fetchone()
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


class DeferredClaims:
    """The keys of commands run without savepoints in one transaction, claimed together before it commits.

    A caller that runs many commands inside its own transaction, none with a savepoint
    (the saga manager's first pass over a batch), can only undo them all together: each
    command claiming its key with an INSERT of its own buys nothing but a round trip. With
    one of these in `CommandContext.deferred_claims`, the middleware records each key here,
    and `claim_all()` inserts them with one executemany, which psycopg pipelines (one round
    trip). When a key turns out taken (or is used twice in the batch) it raises
    IdempotencyKeyTakenError: the caller rolls back and runs the commands again, each with
    a savepoint, claiming first and replaying.
    """

    def __init__(self, using: str) -> None:
        self.using = using
        self._rows: dict[tuple[str, str], list[Any]] = {}

    def add(self, scope: str, key: str, command: Command, fingerprint: str, result: CommandResult) -> None:
        if (scope, key) in self._rows:
            raise IdempotencyKeyTakenError()
        self._rows[scope, key] = _record_row(connections[self.using], scope, key, command, fingerprint, result=result)

    def claim_all(self) -> None:
        """Insert every record; IdempotencyKeyTakenError unless all of them were inserted."""
        if not self._rows:
            return
        connection = connections[self.using]
        with _waiting_for_duplicates(), statement_cursor(connection) as cursor:
            cursor.executemany(_insert_statement(connection), list(self._rows.values()))
            inserted = cursor.rowcount
        if inserted != len(self._rows):
            raise IdempotencyKeyTakenError()
        self._rows.clear()


def _insert_statement(connection: Any) -> str:
    """INSERT of one record that does nothing when its (scope, key) is taken."""
    response = IdempotencyRecord._meta.get_field("response")
    columns = "scope, key, command_type, request_hash, created_at, expires_at, " + connection.ops.quote_name(
        response.column
    )
    return (
        f"INSERT INTO {IdempotencyRecord._meta.db_table} ({columns})"
        " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (scope, key) DO NOTHING"
    )


def _record_row(
    connection: Any, scope: str, key: str, command: Command, fingerprint: str, *, result: CommandResult | None
) -> list[Any]:
    """The values of _insert_statement: a record expiring after IDEMPOTENCY_TTL, with the result if known."""
    now = timezone.now()
    adapt = connection.ops.adapt_datetimefield_value
    response = IdempotencyRecord._meta.get_field("response")
    return [
        scope,
        key,
        command.command_type,
        fingerprint,
        adapt(now),
        adapt(now + timedelta(seconds=es_settings.IDEMPOTENCY_TTL)),
        None if result is None else response.get_db_prep_save(result.to_dict(), connection),
    ]


@contextmanager
def _waiting_for_duplicates() -> Iterator[None]:
    """A claim waits for a concurrent duplicate's transaction; a wait cut off by a time limit means it still runs."""
    try:
        yield
    except DatabaseError as exc:
        if _sqlstate(exc) in WAIT_ENDED:
            raise IdempotencyInProgressError() from exc
        raise
