"""The saga manager: feeds a saga its events from the log and dispatches the commands it returns.

It runs under the async projection runner (`ProjectionRunner`), with a
checkpoint named `saga:<SagaName>`, so it has the same lease, batching and
poison-event policy as an async projection. Everything one batch does — the
saga states it creates and changes, the commands it dispatches (their events,
inline projections, outbox rows) and the checkpoint's advance — commits in one
transaction: a worker that dies mid-batch leaves nothing half done, and the
next one handles the same events again from the checkpoint.

Each instance's row is locked (SELECT … FOR UPDATE on PostgreSQL; SQLite's
write transactions are exclusive) and written back only over the version it was
read at, so a timeout firing in another worker never interleaves with it. An
event id already in `processed_event_ids` is skipped. Commands carry the
correlation id of the event that started the instance (its `trace_id`), the
triggering event as causation, and an idempotency
key made of the saga type, the correlation id and the step name. A
`ConcurrencyError` that outlasts the command bus's retries is transient here:
the runner retries the batch rather than the saga failing over a lost race.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cache

from django.db import connections, transaction
from django.utils import timezone

from ..commands import Command, CommandContext, CommandResult, dispatch
from ..commands.middleware.idempotency import DeferredClaims, IdempotencyKeyTakenError
from ..commands.registry import command_registry
from ..conf import es_settings
from ..exceptions import (
    CommandRejectedError,
    CommandValidationError,
    ConcurrencyError,
    EventSourcingError,
    StreamNotFoundError,
)
from ..models import SagaState, SagaStatus
from ..projections.base import ASYNC, in_categories
from ..projections.runner import TRANSIENT_ERRORS
from ..store import EventStore, RecordedEvent
from ..store.cursors import statement_cursor
from .base import ACTIVE_STATUSES, Saga, SagaInstance, Step, json_ready

logger = logging.getLogger("eventsourcing_app.sagas")

# A step's command refused for these reasons makes the saga fail and compensate; other errors are bugs
# or outages, and go to the runner (retried when transient, else the saga's on_error policy).
REFUSALS = (CommandRejectedError, CommandValidationError, StreamNotFoundError)
CHECKPOINT_PREFIX = "saga:"
# Processed event ids and history entries kept per instance: enough for any redelivery and for
# an operator to follow the saga, bounded for long-lived ones.
PROCESSED_IDS_KEPT = 500
HISTORY_KEPT = 500
# How long a timeout that raised waits before it is tried again: doubled after each consecutive failure, up to
# the maximum, so a bug in on_timeout is not run (and logged) every minute while someone fixes it.
TIMEOUT_RETRY_DELAY = timedelta(minutes=1)
TIMEOUT_RETRY_MAX_DELAY = timedelta(hours=1)


class RedoWithSavepoints(Exception):
    """A command of a batch's fast pass raised: the pass is undone, and the batch redone with a savepoint each."""


class SagaConflictError(EventSourcingError):
    """A saga instance changed under us although its row was locked (a bug, or rows written by hand)."""

    code = "saga_conflict"
    default_detail = "The saga instance was changed concurrently."


def checkpoint_name(saga_name: str) -> str:
    return f"{CHECKPOINT_PREFIX}{saga_name}"


class SagaManager:
    """One saga, shaped like an async projection for `ProjectionRunner`."""

    kind = ASYNC
    # Errors after which the runner retries the batch (with backoff) instead of treating the event as poison.
    transient_errors = (ConcurrencyError,)

    def __init__(self, saga: Saga, *, store: EventStore | None = None) -> None:
        self.saga = saga
        self.name = checkpoint_name(saga.name)
        self.event_types = saga.event_types
        self.categories = tuple(saga.categories)
        self.on_error = saga.on_error
        self.store = store or EventStore()

    @property
    def batch_size(self) -> int:
        return self.saga.batch_size or es_settings.SAGA_BATCH_SIZE

    def wants(self, event_type: str, category: str | None = None) -> bool:
        if self.saga.handler_for(event_type) is None:
            return False
        return in_categories(category, self.categories)

    # ------------------------------------------------------------------ events
    def handle_batch(self, events: list[RecordedEvent]) -> None:
        """Handle a batch in the runner's transaction: one query loads (and locks) every instance it touches.

        A command dispatched inside a transaction takes a savepoint of its own (two round trips), so that
        one refused command is undone alone. A batch first runs its commands without them, inside one
        savepoint of the batch's: when every command goes through (the usual case), that is all. When
        one raises (refused, a lost race, an outage), the whole pass is rolled back to that savepoint,
        on-commit nudges included, and the batch is handled again with a savepoint per command, so
        that the failing command is undone alone. Those commands are logged and counted twice.
        The fast pass also claims its commands' idempotency keys together, in one round trip at its
        end (DeferredClaims); a key found taken there redoes the batch the same way.
        """
        using = self.store.using
        if connections[using].in_atomic_block:
            try:
                with transaction.atomic(using=using):
                    claims = DeferredClaims(using)
                    self._handle_batch(events, claims=claims)
                    try:
                        claims.claim_all()
                    except IdempotencyKeyTakenError as exc:
                        raise RedoWithSavepoints() from exc
                return
            except RedoWithSavepoints:
                pass
        self._handle_batch(events, claims=None)

    def _handle_batch(self, events: list[RecordedEvent], *, claims: DeferredClaims | None) -> None:
        """`claims`: the fast pass's deferred idempotency claims (no savepoints); None: a savepoint per command."""
        keyed = [(event, self.saga.correlation_id(event)) for event in events]
        states = self._lock_states({cid for _, cid in keyed if cid})
        known_ids = {cid: state.version for cid, state in states.items()}
        changed: dict[str, SagaState] = {}
        for event, cid in keyed:
            if cid is None:
                continue
            state = states.get(cid)
            if state is None:
                if event.event_type not in self.saga.starts_with:
                    continue  # an event of an instance that never started (or started before this saga existed)
                state = states[cid] = self._new_state(cid, event)
            if state.status not in ACTIVE_STATUSES or str(event.event_id) in state.processed_event_ids:
                continue
            self._handle(state, event, claims=claims)
            changed[cid] = state
        self._save(changed, known_ids)

    def _lock_states(self, correlation_ids: set[str]) -> dict[str, SagaState]:
        if not correlation_ids:
            return {}
        rows = SagaState.objects.using(self.store.using).filter(
            saga_type=self.saga.name, correlation_id__in=correlation_ids
        )
        if connections[self.store.using].features.has_select_for_update:
            rows = rows.select_for_update()
        return {state.correlation_id: state for state in rows}

    def _new_state(self, correlation_id: str, event: RecordedEvent) -> SagaState:
        now = timezone.now()
        return SagaState(
            saga_type=self.saga.name,
            correlation_id=correlation_id,
            trace_id=event.metadata.get("correlation_id") or "",
            tenant_id=event.metadata.get("tenant_id") or "",
            started_at=now,
            updated_at=now,
        )

    def _handle(self, state: SagaState, event: RecordedEvent, *, claims: DeferredClaims | None) -> None:
        instance = SagaInstance(state, event)
        _log(state, "event", event_type=event.event_type, event_id=str(event.event_id), position=event.position)
        steps = self.saga.handler_for(event.event_type)(self.saga, instance, event)
        self.advance(instance, steps, cause=event, claims=claims)
        state.processed_event_ids = [*state.processed_event_ids, str(event.event_id)][-PROCESSED_IDS_KEPT:]

    def _save(self, changed: dict[str, SagaState], known_versions: dict[str, int]) -> None:
        using = self.store.using
        fresh = [state for cid, state in changed.items() if cid not in known_versions]
        for state in fresh:
            state.version = 1
        SagaState.objects.using(using).bulk_create(fresh)
        save_over_many(
            [(state, known_versions[cid]) for cid, state in changed.items() if cid in known_versions], using=using
        )

    # ------------------------------------------------------------------ steps and compensation
    def advance(
        self,
        instance: SagaInstance,
        steps: Iterable[Step | Command] | None,
        *,
        cause: RecordedEvent | None,
        label: str = "timeout",
        claims: DeferredClaims | None = None,
    ) -> None:
        """Dispatch a handler's steps in order, then complete, compensate or keep running.

        `cause` is the event handled (the commands' causation); without one, `label` says what
        moved the saga on (a timeout, an operator's retry) in the commands' causation id.
        With `claims` (the fast pass of handle_batch), commands run without savepoints and claim their
        keys there, and a command that raises raises RedoWithSavepoints.
        """
        state = instance.state
        for step in _as_steps(steps):
            if instance.failure is not None:
                break
            state.current_step = step.name
            try:
                result = self._dispatch(instance, step.command, key=step.name, cause=cause, label=label, claims=claims)
            except REFUSALS as exc:
                _log(state, "refused", step=step.name, command_type=step.command.command_type, error=str(exc))
                instance.fail(f"{step.name}: {exc}")
                break
            _log(state, "command", step=step.name, command_type=step.command.command_type, events=result.events)
            if step.compensate is not None:
                instance.compensate_with(step.name, step.compensate)
        if instance.failure is not None:
            self._fail(instance, cause=cause, label=label, claims=claims)
        elif instance.completed:
            self._finish(state, SagaStatus.COMPLETED)
        else:
            state.status = SagaStatus.RUNNING

    def _fail(
        self, instance: SagaInstance, *, cause: RecordedEvent | None, label: str, claims: DeferredClaims | None = None
    ) -> None:
        state = instance.state
        state.last_error = instance.failure or ""
        _log(state, "failed", reason=state.last_error)
        if not (instance.compensate_on_failure and state.compensations):
            self._finish(state, SagaStatus.FAILED)
            return
        state.status = SagaStatus.COMPENSATING
        while state.compensations:
            compensation = state.compensations[-1]
            if not self._compensate(instance, compensation, cause=cause, label=label, claims=claims):
                self._finish(state, SagaStatus.COMPENSATION_FAILED)
                return
            state.compensations = state.compensations[:-1]
        self._finish(state, SagaStatus.COMPENSATED)

    def _compensate(
        self,
        instance: SagaInstance,
        compensation: dict,
        *,
        cause: RecordedEvent | None,
        label: str,
        claims: DeferredClaims | None,
    ) -> bool:
        """Run one compensation, retrying with backoff; False when every attempt failed.

        A transient database error (a lost connection, a deadlock) is not the compensation's
        fault: it goes up to the runner, which retries the whole batch.
        """
        state, step = instance.state, compensation["step"]
        attempts = max(1, es_settings.SAGA_COMPENSATION_ATTEMPTS)
        for attempt in range(1, attempts + 1):
            try:
                command = self._compensating_command(instance, compensation)
                if command is None:
                    _log(state, "compensated", step=step, command_type=None, events=[])
                    return True
                result = self._dispatch(
                    instance, command, key=f"compensate:{step}", cause=cause, label=label, claims=claims
                )
            except (*TRANSIENT_ERRORS, ConcurrencyError, RedoWithSavepoints):
                raise
            except Exception as exc:
                logger.warning(
                    "saga=%s correlation_id=%s compensation %r failed (attempt %s/%s): %r",
                    self.saga.name,
                    state.correlation_id,
                    step,
                    attempt,
                    attempts,
                    exc,
                )
                _log(state, "compensation_error", step=step, attempt=attempt, error=str(exc) or repr(exc))
                if attempt == attempts:
                    state.last_error = f"compensation {step!r} failed: {exc!r}"[:4000]
                    return False
                time.sleep(min(es_settings.SAGA_COMPENSATION_BACKOFF * 2 ** (attempt - 1), 2.0))
            else:
                _log(state, "compensated", step=step, command_type=command.command_type, events=result.events)
                return True
        return False

    def _compensating_command(self, instance: SagaInstance, compensation: dict) -> Command | None:
        if "method" in compensation:
            return getattr(self.saga, compensation["method"])(instance)
        command_class = command_registry.lookup(compensation["command_type"]).command_class
        return command_class(**compensation["data"])

    def _dispatch(
        self,
        instance: SagaInstance,
        command: Command,
        *,
        key: str,
        cause: RecordedEvent | None,
        label: str,
        claims: DeferredClaims | None,
    ) -> CommandResult:
        state = instance.state
        correlation_id = state.trace_id or state.correlation_id
        context = CommandContext(
            correlation_id=correlation_id,
            causation_id=str(cause.event_id) if cause else f"{CHECKPOINT_PREFIX}{self.saga.name}:{label}",
            tenant_id=state.tenant_id or None,
            idempotency_key=idempotency_key(self.saga.name, state.correlation_id, key),
            custom_metadata={"saga": self.saga.name, "saga_id": state.correlation_id},
            store=self.store,
            savepoint=claims is None,
            deferred_claims=claims,
        )
        if claims is None:
            return dispatch(command, context)
        try:
            return dispatch(command, context)
        except Exception as exc:
            raise RedoWithSavepoints() from exc

    def _finish(self, state: SagaState, status: str) -> None:
        state.status = status
        state.completed_at = timezone.now()
        state.deadline = None
        _log(state, "status", status=status)

    # ------------------------------------------------------------------ timeouts
    def fire_timeouts(self, *, now: datetime | None = None, limit: int = 100) -> int:
        """Run `on_timeout` of each running instance whose deadline has passed; returns how many fired.

        Each instance is handled in its own transaction, its row locked (rows another worker holds are
        skipped, on PostgreSQL) and re-checked, so a timeout and an event never act on one instance at once.
        An instance whose timeout raises keeps its error in `last_error` and its history, and is tried
        again a minute later, then two, four… (at most an hour); the others still fire, and the first
        error is raised once they have.
        """
        now = now or timezone.now()
        using = self.store.using
        due = SagaState.objects.using(using).filter(
            saga_type=self.saga.name, status__in=ACTIVE_STATUSES, deadline__lte=now
        )
        fired, first_error = 0, None
        for pk in list(due.order_by("deadline").values_list("pk", flat=True)[:limit]):
            try:
                with transaction.atomic(using=using):
                    rows = due.filter(pk=pk)
                    if connections[using].features.has_select_for_update_skip_locked:
                        rows = rows.select_for_update(skip_locked=True)
                    state = rows.first()
                    if state is None:
                        continue
                    version = state.version
                    try:
                        with transaction.atomic(using=using):
                            self.fire_timeout(state)
                            save_over(state, version, using=using)
                    except Exception as exc:
                        # Rolled back to before the timeout, row still locked: nobody moved it meanwhile.
                        first_error = first_error or exc
                        state = SagaState.objects.using(using).get(pk=pk)
                        _postpone_timeout(state, exc, now)
                        save_over(state, version, using=using)
                    else:
                        fired += 1
            except Exception as exc:  # the database itself failed: this instance stays due
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return fired

    def fire_timeout(self, state: SagaState, **note: object) -> None:
        """Run the saga's `on_timeout` on a locked, running instance (the caller saves it)."""
        instance = SagaInstance(state)
        _log(state, "timeout", deadline=state.deadline.isoformat() if state.deadline else None, **note)
        state.deadline = None
        self.advance(instance, self.saga.on_timeout(instance), cause=None, label="timeout")

    def retry_compensation(self, state: SagaState, failure: str, **note: object) -> None:
        """Run the compensations a `compensation_failed` instance has left, newest first (the caller saves it)."""
        instance = SagaInstance(state)
        instance.failure = failure
        _log(state, "retry_compensation", **note)
        self._fail(instance, cause=None, label="retry")


SAVED_FIELDS = (
    "status",
    "current_step",
    "data",
    "processed_event_ids",
    "compensations",
    "history",
    "last_error",
    "version",
    "updated_at",
    "completed_at",
    "deadline",
)


def save_over(state: SagaState, version: int, *, using: str) -> None:
    """Write a changed instance back, only over the version it was read at."""
    save_over_many([(state, version)], using=using)


def save_over_many(changes: list[tuple[SagaState, int]], *, using: str) -> None:
    """Write changed instances back, each only over the version it was read at (SagaConflictError if not).

    One prepared UPDATE, run for every instance at once: psycopg pipelines an executemany,
    so a batch's instances cost one round trip, not one each (and the ORM's queryset
    update cost more to compile than the statement took to run).
    """
    if not changes:
        return
    now = timezone.now()
    connection = connections[using]
    sql, fields = _save_over_statement(using)
    rows = []
    for state, version in changes:
        state.version, state.updated_at = version + 1, now
        values = [field.get_db_prep_save(getattr(state, field.attname), connection) for field in fields]
        rows.append([*values, state.pk, version])
    with statement_cursor(connection) as cursor:
        cursor.executemany(sql, rows)
        updated = cursor.rowcount
    if updated != len(changes):
        moved = ", ".join(f"{state.saga_type} {state.correlation_id} (version {version})" for state, version in changes)
        raise SagaConflictError(
            f"{len(changes) - updated} of these saga instances moved past the version read: {moved}."
        )


@cache
def _save_over_statement(using: str) -> tuple[str, list]:
    """save_over's UPDATE for a database alias, and the fields whose values it takes in order."""
    quote = connections[using].ops.quote_name
    fields = [SagaState._meta.get_field(name) for name in SAVED_FIELDS]
    assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
    table, key = SagaState._meta.db_table, SagaState._meta.pk.column
    return f"UPDATE {table} SET {assignments} WHERE {key} = %s AND version = %s", fields


def idempotency_key(saga_name: str, correlation_id: str, step: str) -> str:
    """The key of a saga's command: the same on every redelivery, distinct per instance and step."""
    key = f"saga:{saga_name}:{correlation_id}:{step}"
    if len(key) <= 255:
        return key
    return f"saga:{hashlib.sha256(key.encode()).hexdigest()}"


def _as_steps(steps: Iterable[Step | Command] | None) -> list[Step]:
    """A handler may return Steps, bare Commands (a step named after the command type) or None."""
    if steps is None:
        return []
    if isinstance(steps, Step | Command):
        steps = [steps]
    return [s if isinstance(s, Step) else Step(s.command_type, s) for s in steps]


def _postpone_timeout(state: SagaState, error: Exception, now: datetime) -> None:
    """Record a timeout that raised and set its next try: each consecutive failure doubles the wait.

    Consecutive failures share one history entry (a count, the first and the last), so an
    instance stuck for weeks does not push its events and commands out of the history.
    """
    last = state.history[-1] if state.history else {}
    failures = last.get("failures", 1) + 1 if last.get("kind") == "timeout_error" else 1
    state.deadline = now + min(TIMEOUT_RETRY_DELAY * 2 ** min(failures - 1, 16), TIMEOUT_RETRY_MAX_DELAY)
    state.last_error = f"timeout failed: {error!r}"[:4000]
    details = {"failures": failures, "error": repr(error)[:1000], "retry_at": state.deadline.isoformat()}
    if failures > 1:
        state.history = state.history[:-1]
        details["first_at"] = last.get("first_at", last.get("at"))
    _log(state, "timeout_error", **details)


def _log(state: SagaState, kind: str, **details: object) -> None:
    """Append to the instance's history (shown in the admin): what it handled, issued and decided."""
    entry = {"at": timezone.now().isoformat(), "kind": kind, **json_ready(details)}
    state.history = [*state.history, entry][-HISTORY_KEPT:]
