"""Idempotency-Key: a replay returns the stored result and appends nothing.

This middleware runs inside the command's transaction. It inserts the key's
record before the handler runs and completes it with the result before
COMMIT. A concurrent duplicate therefore waits, on the record's unique index
(PostgreSQL) or on the write lock (SQLite), until the first commits, and then
finds the stored result and replays it. If the first is still running when the
command's time limit ends the wait, the duplicate gets IdempotencyInProgressError.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.utils import timezone

from ...conf import es_settings
from ...exceptions import IdempotencyConflictError, IdempotencyInProgressError
from ...models import IdempotencyRecord
from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next


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
        records = IdempotencyRecord.objects.using(context.store.using).filter(
            scope=scope_of(context), key=context.idempotency_key
        )
        stored = self._replay(records, command, fingerprint)
        if stored is not None:
            return stored
        now = timezone.now()
        try:
            with transaction.atomic(using=context.store.using):
                record = records.create(
                    scope=scope_of(context),
                    key=context.idempotency_key,
                    command_type=command.command_type,
                    request_hash=fingerprint,
                    created_at=now,
                    expires_at=now + timedelta(seconds=es_settings.IDEMPOTENCY_TTL),
                )
        except DatabaseError:
            # A duplicate inserted the key first (we waited for it to commit), or the wait timed out.
            stored = self._replay(records, command, fingerprint)
            if stored is None:
                raise IdempotencyInProgressError() from None
            return stored
        result = next_(command, context)
        record.response = result.to_dict()
        record.save(update_fields=["response"])
        return result

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
