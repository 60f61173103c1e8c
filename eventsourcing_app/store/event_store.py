"""Append to streams and read them back, with optimistic concurrency.

The hot paths use raw SQL on Django's own connection, so an append joins the
caller's transaction like any ORM write, without the ORM's per-row overhead.
Positions in the global log are gap-free: see docs/event-store.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from ..conf import es_settings
from ..exceptions import ConcurrencyError, DuplicateEventIdError, InvalidStreamIdError, StreamNotFoundError
from .codecs import decode_data, decode_metadata, encode_data, encode_metadata
from .events import DomainEvent
from .records import (
    ANY,
    METADATA_KEYS,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    ExpectedVersion,
    Metadata,
    NewEvent,
    RecordedEvent,
    StreamInfo,
    StreamState,
)

STREAM_TABLE = "eventsourcing_stream"
EVENT_TABLE = "eventsourcing_event"
INSERT_EVENTS = (
    f"INSERT INTO {EVENT_TABLE} (event_id, stream_id, category, version, event_type, schema_version,"
    " data, metadata, recorded_at) VALUES"
)
INSERT_EVENT_VALUES = "(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
INSERT_CHUNK = 1000  # rows per INSERT: 9,000 parameters, under SQLite's 32,766 and PostgreSQL's 65,535
EVENT_COLUMNS = "position, event_id, stream_id, version, event_type, schema_version, data, metadata, recorded_at"


class _DuplicateEventIds(Exception):
    """Raised inside the append's atomic block to roll it back when an event_id was already stored."""


def category_of(stream_id: str) -> str:
    """The category of a "Category-id" stream id, checking its form."""
    category, dash, rest = stream_id.partition("-")
    if not (category and dash and rest) or len(stream_id) > 255 or len(category) > 100:
        raise InvalidStreamIdError(f'Stream id {stream_id!r} is not of the form "Category-id".')
    return category


class EventStore:
    """The event store on one Django database (`using`)."""

    def __init__(self, using: str = "default") -> None:
        self.using = using

    # ---------------------------------------------------------------- writing
    def append(
        self,
        stream_id: str,
        events: Iterable[NewEvent | DomainEvent],
        *,
        expected_version: ExpectedVersion = ANY,
        metadata: Metadata | None = None,
    ) -> AppendResult:
        """Append events to a stream atomically: all of them or none.

        Args:
            stream_id: "Category-id".
            events: `NewEvent`s, or domain events (wrapped with a fresh event id).
            expected_version: ANY, NO_STREAM, STREAM_EXISTS or the exact current
                version (0 is the same as NO_STREAM).
            metadata: merged under each event's own metadata.

        Raises:
            ConcurrencyError: the stream is not at `expected_version`.
            DuplicateEventIdError: an event id is stored, but not as this same append.

        Appending events whose ids are all stored already, in this stream and
        order, returns the stored result instead of writing them twice.
        """
        category = category_of(stream_id)
        new_events = [_as_new_event(event, metadata) for event in events]
        if not new_events:
            raise ValueError("append() needs at least one event.")
        try:
            with transaction.atomic(using=self.using):
                return self._append(stream_id, category, new_events, expected_version)
        except ConcurrencyError:
            if (stored := self._already_appended(stream_id, new_events)) is not None:
                return stored
            raise
        except _DuplicateEventIds:
            if (stored := self._already_appended(stream_id, new_events)) is not None:
                return stored
            raise DuplicateEventIdError(
                f"Some event ids of this append to {stream_id!r} are stored elsewhere."
            ) from None

    def _append(
        self, stream_id: str, category: str, new_events: list[NewEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        connection = connections[self.using]
        now = timezone.now()
        with connection.cursor() as cursor:
            version = self._advance_stream(
                cursor, stream_id, category=category, count=len(new_events), expected=expected_version, now=now
            )
            first_version = version - len(new_events) + 1
            rows = [self._event_row(stream_id, category, first_version + i, e, now) for i, e in enumerate(new_events)]
            positions: dict[int, int] = {}
            # Chunked to stay under the drivers' limits on parameters per statement.
            for start in range(0, len(rows), INSERT_CHUNK):
                chunk = rows[start : start + INSERT_CHUNK]
                cursor.execute(
                    f"{INSERT_EVENTS} {', '.join([INSERT_EVENT_VALUES] * len(chunk))}"
                    " ON CONFLICT (event_id) DO NOTHING RETURNING version, position",
                    [value for row in chunk for value in row],
                )
                positions.update(cursor.fetchall())
        if len(positions) != len(new_events):
            raise _DuplicateEventIds
        recorded = [
            RecordedEvent(
                position=positions[first_version + i],
                event_id=event.event_id,
                stream_id=stream_id,
                version=first_version + i,
                event_type=event.event_type,
                schema_version=event.schema_version,
                data=event.data,
                metadata=dict(event.metadata),
                recorded_at=now,
            )
            for i, event in enumerate(new_events)
        ]
        for hook in es_settings.APPEND_HOOKS:
            hook(recorded)
        return AppendResult(stream_id=stream_id, version=version, events=recorded)

    def _event_row(self, stream_id: str, category: str, version: int, event: NewEvent, now: datetime) -> tuple:
        connection = connections[self.using]
        metadata = dict(event.metadata)
        return (
            event.event_id if connection.features.has_native_uuid_field else event.event_id.hex,
            stream_id,
            category,
            version,
            event.event_type,
            event.schema_version,
            encode_data(event.event_type, event.data, metadata),
            encode_metadata(metadata),
            connection.ops.adapt_datetimefield_value(now),
        )

    def _advance_stream(
        self, cursor: Any, stream_id: str, *, category: str, count: int, expected: ExpectedVersion, now: datetime
    ) -> int:
        """Move the stream's version on by `count` if it is as expected; return the new version.

        The UPDATE/upsert takes the stream row's lock, so concurrent writers to one
        stream queue here and the losers see the version the winner wrote.
        """
        stamp = connections[self.using].ops.adapt_datetimefield_value(now)
        if expected is ANY:
            cursor.execute(
                f"INSERT INTO {STREAM_TABLE} (stream_id, category, version, created_at, updated_at)"
                f" VALUES (%s, %s, %s, %s, %s) ON CONFLICT (stream_id) DO UPDATE"
                f" SET version = {STREAM_TABLE}.version + %s, updated_at = %s RETURNING version",
                [stream_id, category, count, stamp, stamp, count, stamp],
            )
        elif expected is NO_STREAM or expected == 0:
            cursor.execute(
                f"INSERT INTO {STREAM_TABLE} (stream_id, category, version, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (stream_id) DO NOTHING RETURNING version",
                [stream_id, category, count, stamp, stamp],
            )
        elif expected is STREAM_EXISTS:
            cursor.execute(
                f"UPDATE {STREAM_TABLE} SET version = version + %s, updated_at = %s"
                " WHERE stream_id = %s RETURNING version",
                [count, stamp, stream_id],
            )
        elif isinstance(expected, int) and not isinstance(expected, bool) and expected > 0:
            cursor.execute(
                f"UPDATE {STREAM_TABLE} SET version = version + %s, updated_at = %s"
                " WHERE stream_id = %s AND version = %s RETURNING version",
                [count, stamp, stream_id, expected],
            )
        else:
            raise ValueError(
                f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or an int >= 0, not {expected!r}."
            )
        row = cursor.fetchone()
        if row is None:
            raise ConcurrencyError(stream_id, expected, self._current_version(cursor, stream_id))
        return row[0]

    def _current_version(self, cursor: Any, stream_id: str) -> int:
        cursor.execute(f"SELECT version FROM {STREAM_TABLE} WHERE stream_id = %s", [stream_id])
        row = cursor.fetchone()
        return row[0] if row else 0

    def _already_appended(self, stream_id: str, new_events: list[NewEvent]) -> AppendResult | None:
        """The stored result of an earlier identical append (same ids, stream and order), if any."""
        ids = [event.event_id for event in new_events]
        stored = {event.event_id: event for event in self._select("event_id IN ({})", ids, in_params=True)}
        if len(stored) != len(ids) or any(stored[i].stream_id != stream_id for i in ids):
            return None
        recorded = [stored[i] for i in ids]
        if [e.version for e in recorded] != list(range(recorded[0].version, recorded[0].version + len(ids))):
            return None
        return AppendResult(stream_id=stream_id, version=recorded[-1].version, events=recorded)

    # ---------------------------------------------------------------- reading
    def read_stream(self, stream_id: str, *, from_version: int = 1, limit: int | None = None) -> list[RecordedEvent]:
        """A stream's events from `from_version` on, in version order; [] if the stream does not exist."""
        sql = f"SELECT {EVENT_COLUMNS} FROM {EVENT_TABLE} WHERE stream_id = %s AND version >= %s ORDER BY version"
        params: list[Any] = [stream_id, from_version]
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        return self._fetch(sql, params)

    def read_all(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        event_types: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
    ) -> list[RecordedEvent]:
        """One batch of the global log: events after position `after`, in position order.

        A reader that keeps passing the last position it saw as `after` sees every
        committed event exactly once: positions become visible in order.
        """
        clauses, params = ["position > %s"], [after]
        for column, wanted in (("event_type", event_types), ("category", categories)):
            if wanted is not None:
                values = list(wanted)
                if not values:
                    return []
                clauses.append(f"{column} IN ({', '.join(['%s'] * len(values))})")
                params.extend(values)
        sql = f"SELECT {EVENT_COLUMNS} FROM {EVENT_TABLE} WHERE {' AND '.join(clauses)} ORDER BY position LIMIT %s"
        return self._fetch(sql, [*params, limit or es_settings.READ_BATCH_SIZE])

    def iter_all(
        self,
        *,
        after: int = 0,
        batch_size: int | None = None,
        event_types: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
    ) -> Iterator[RecordedEvent]:
        """The global log after `after`, read lazily in batches of `batch_size` (READ_BATCH_SIZE)."""
        batch_size = batch_size or es_settings.READ_BATCH_SIZE
        while batch := self.read_all(after=after, limit=batch_size, event_types=event_types, categories=categories):
            yield from batch
            after = batch[-1].position
            if len(batch) < batch_size:
                return

    def head_position(self) -> int:
        """The highest position in the global log (0 when it is empty)."""
        with connections[self.using].cursor() as cursor:
            cursor.execute(f"SELECT MAX(position) FROM {EVENT_TABLE}")
            return cursor.fetchone()[0] or 0

    def stream_info(self, stream_id: str) -> StreamInfo:
        """Version and timestamps of a stream. Raises StreamNotFoundError if it has no events."""
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"SELECT stream_id, category, version, created_at, updated_at FROM {STREAM_TABLE} WHERE stream_id = %s",
                [stream_id],
            )
            row = cursor.fetchone()
        if row is None:
            raise StreamNotFoundError(stream_id)
        return StreamInfo(row[0], row[1], row[2], self._datetime(row[3]), self._datetime(row[4]))

    def _select(self, where: str, values: list[Any], *, in_params: bool = False) -> list[RecordedEvent]:
        connection = connections[self.using]
        if connection.vendor != "postgresql":
            values = [v.hex if isinstance(v, uuid.UUID) else v for v in values]
        where = where.format(", ".join(["%s"] * len(values))) if in_params else where
        return self._fetch(f"SELECT {EVENT_COLUMNS} FROM {EVENT_TABLE} WHERE {where} ORDER BY position", values)

    def _fetch(self, sql: str, params: list[Any]) -> list[RecordedEvent]:
        with connections[self.using].cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return [self._record(row) for row in rows]

    def _record(self, row: tuple) -> RecordedEvent:
        position, event_id, stream_id, version, event_type, schema_version, data, metadata, recorded_at = row
        metadata = decode_metadata(metadata)
        schema_version, payload = decode_data(event_type, schema_version, data, metadata)
        return RecordedEvent(
            position=position,
            event_id=event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id),
            stream_id=stream_id,
            version=version,
            event_type=event_type,
            schema_version=schema_version,
            data=payload,
            metadata=metadata,
            recorded_at=self._datetime(recorded_at),
        )

    @staticmethod
    def _datetime(value: datetime | str) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _as_new_event(event: NewEvent | DomainEvent, metadata: Metadata | None) -> NewEvent:
    if isinstance(event, DomainEvent):
        event = NewEvent.of(event)
    elif not isinstance(event, NewEvent):
        raise TypeError(f"Expected a NewEvent or a DomainEvent, got {type(event).__name__}.")
    merged: dict[str, Any] = {**(metadata or {}), **event.metadata}
    if unknown := set(merged) - METADATA_KEYS:
        raise ValueError(f"Unknown metadata keys {sorted(unknown)}; allowed: {sorted(METADATA_KEYS)}.")
    for key, value in merged.items():
        if key != "custom" and value is not None:
            merged[key] = str(value)
    if merged == event.metadata:
        return event
    return NewEvent(event.event_type, event.data, event.event_id, merged, event.schema_version)  # type: ignore[arg-type]


__all__ = ["EventStore", "StreamState", "category_of"]
