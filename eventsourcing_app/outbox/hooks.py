"""How the outbox hears of appends: a store hook writing messages in the append's transaction, and a nudge.

`write_outbox_messages` (an APPEND_HOOK) runs inside the append's transaction,
after the events' INSERT: the messages commit or roll back with their events,
so there is no event without its message and no message without its event. A
failure writing them raises `OutboxWriteError`, which rolls the append back.

`nudge_outbox_processor` (a COMMIT_HOOK) queues a `process_outbox` task once
the events have committed; the beat poll is the safety net for a lost nudge.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import DatabaseError, connections, router
from django.utils import timezone

from ..exceptions import OutboxWriteError
from ..models import OutboxMessage
from ..projections.hooks import enqueue_once
from ..store import RecordedEvent
from ..store.cursors import statement_cursor
from . import statements
from .routes import message_id_for, route_table

# Cache key marking "a process_outbox task is queued and has not started yet".
PENDING_KEY = "eventsourcing:outbox-pending"
# Seconds the mark lives: a task lost by the broker cannot block nudges for longer.
PENDING_TIMEOUT = 60


def wants(event_types: Iterable[str]) -> bool:
    """Whether any outbox route matches one of these event types (memoised: every append asks)."""
    return route_table().wants(event_types)


def write_outbox_messages(recorded: list[RecordedEvent]) -> None:
    """APPEND_HOOK: one outbox row per event and destination its routes accept, in one INSERT.

    Raises:
        OutboxWriteError: the rows could not be written (the append then rolls back).
        OutboxConfigurationError: a route is misconfigured.
    """
    using = router.db_for_write(OutboxMessage)
    connection = connections[using]
    native_uuid = connection.features.has_native_uuid_field
    stamp = connection.ops.adapt_datetimefield_value(timezone.now())
    table = route_table()
    rows = []
    for event in recorded:
        taken: set[str] = set()
        for route in table.for_type(event.event_type):
            if route.destination in taken or not route.accepts(event):
                continue
            taken.add(route.destination)
            message_id = message_id_for(event.event_id, route.destination)
            rows.append(
                (
                    message_id if native_uuid else message_id.hex,
                    route.destination,
                    event.event_id if native_uuid else event.event_id.hex,
                    event.position,
                    event.stream_id,
                    event.event_type,
                    event.metadata.get("tenant_id") or "",
                    route.encoded_payload(event),
                    stamp,
                    stamp,
                )
            )
    if rows:
        _insert(connection, rows)


def _insert(connection: Any, rows: list[tuple]) -> None:
    # An IntegrityError must not escape as one: the store reads that as a concurrent append of the same events.
    try:
        with statement_cursor(connection) as cursor:
            for start in range(0, len(rows), statements.INSERT_CHUNK):
                cursor.execute(*statements.insert_messages(rows[start : start + statements.INSERT_CHUNK]))
    except DatabaseError as exc:
        raise OutboxWriteError(f"Could not write {len(rows)} outbox message(s): {exc}") from exc


write_outbox_messages.wants = wants  # type: ignore[attr-defined]


def nudge_outbox_processor(recorded: list[RecordedEvent]) -> None:
    """COMMIT_HOOK: queue a processor run for the messages these events just committed."""
    enqueue_processing()


nudge_outbox_processor.wants = wants  # type: ignore[attr-defined]


def enqueue_processing() -> None:
    """Queue `process_outbox` unless a run is queued and not started yet (it will see these messages).

    The mark lives in Django's cache, which every process must share once tasks go
    through a broker (as for projections).
    """
    from .tasks import process_outbox

    enqueue_once(PENDING_KEY, process_outbox, timeout=PENDING_TIMEOUT)
