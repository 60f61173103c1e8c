"""Append to streams and read them back, with optimistic concurrency.

The hot paths use raw SQL on Django's own connection, so an append joins the
caller's transaction like any ORM write, without the ORM's per-row overhead.
Positions in the global log are gap-free: see docs/event-store.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.db import IntegrityError, OperationalError, connections, transaction
from django.utils import timezone

from ..conf import es_settings
from ..exceptions import ConcurrencyError, DuplicateEventIdError, InvalidStreamIdError, StreamNotFoundError
from . import commit_runs, statements
from .codecs import decode_data, decode_metadata, encode_data, encode_metadata
from .cursors import statement_cursor
from .events import DomainEvent
from .records import (
    ANY,
    METADATA_KEYS,
    AppendResult,
    ExpectedVersion,
    Metadata,
    NewEvent,
    RecordedEvent,
    StreamInfo,
)
from .statements import EVENT_COLUMNS, EVENT_TABLE, INSERT_CHUNK, STREAM_TABLE

# PostgreSQL: how far readers may follow the log (migration 0007_gap_free_without_a_writer_lock).
SAFE_HEAD_SQL = "SELECT eventsourcing_event_safe_head()"
DEADLOCK_DETECTED = "40P01"
ZERO = timedelta(0)


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
            ConcurrencyError: the stream is not at `expected_version` (or, on PostgreSQL, this
                transaction appended to streams in an order that deadlocked with another's,
                and was rolled back: retry it, as for a lost race).
            DuplicateEventIdError: an event id is stored, but not as this same append.

        Appending events whose ids are all stored already, in this stream and
        order, returns the stored result instead of writing them twice. Inside a
        transaction the append joins it; outside one it commits on its own.
        """
        category = category_of(stream_id)
        events = list(events)
        new_events = [_as_new_event(event, metadata) for event in events]
        if not new_events:
            raise ValueError("append() needs at least one event.")
        # Only a NewEvent's id can be stored already: a domain event gets a fresh one here.
        chosen_ids = {event.event_id for event in events if isinstance(event, NewEvent)}
        connection = connections[self.using]
        one_statement = connection.vendor == "postgresql" and len(new_events) <= INSERT_CHUNK
        event_types = {event.event_type for event in new_events}
        hooks = [hook for hook in es_settings.APPEND_HOOKS if _wants(hook, event_types)]
        write = partial(
            self._write,
            stream_id,
            category,
            new_events,
            chosen_ids=chosen_ids,
            expected=expected_version,
            one_statement=one_statement,
        )
        try:
            if one_statement and not hooks and connection.get_autocommit():
                # A single statement is a transaction of its own: no BEGIN/COMMIT round trips.
                recorded = write()
            else:
                with transaction.atomic(using=self.using, savepoint=not one_statement):
                    recorded = write()
                    if recorded is not None:
                        for hook in hooks:
                            hook(recorded)
        except IntegrityError:
            # Another writer stored the same event ids (or versions) between our check and our insert.
            if connection.needs_rollback or (connection.in_atomic_block and connection.vendor == "postgresql"):
                raise ConcurrencyError(stream_id, expected_version, None) from None
            recorded = None
        except OperationalError as error:
            # Two transactions each appending to several streams, in opposite orders, wait for each
            # other's stream rows: PostgreSQL aborts one. Like a lost race, it is worth a retry.
            if getattr(error.__cause__, "sqlstate", None) == DEADLOCK_DETECTED:
                raise ConcurrencyError(stream_id, expected_version, None) from error
            raise
        if recorded is None:
            return self._resolve_refused(stream_id, new_events, expected_version)
        self._after_commit(recorded)
        return AppendResult(stream_id=stream_id, version=recorded[-1].version, events=recorded)

    def _after_commit(self, recorded: list[RecordedEvent]) -> None:
        """Run COMMIT_HOOKS once the events are committed (at once, outside a transaction).

        `robust`: a failing hook is logged and cannot undo or fail an append that committed.
        The hooks of one transaction share a CommitRun (see commit_runs).
        """
        event_types = {event.event_type for event in recorded}
        hooks = [hook for hook in es_settings.COMMIT_HOOKS if _wants(hook, event_types)]
        if not hooks:
            return
        run = commit_runs.for_connection(connections[self.using])
        for hook in hooks:
            callback = partial(commit_runs.run_hook, run, hook, recorded)
            # Django names a failing robust callback by its __qualname__, which a partial lacks.
            callback.__qualname__ = getattr(hook, "__qualname__", type(hook).__qualname__)  # type: ignore[attr-defined]
            transaction.on_commit(callback, using=self.using, robust=True)

    def _write(
        self,
        stream_id: str,
        category: str,
        new_events: list[NewEvent],
        *,
        chosen_ids: set[uuid.UUID],
        expected: ExpectedVersion,
        one_statement: bool,
    ) -> list[RecordedEvent] | None:
        """Write the append; None if the guard refused it (version moved on, or ids already stored)."""
        connection = connections[self.using]
        now = timezone.now()
        stamp = connection.ops.adapt_datetimefield_value(now)
        count = len(new_events)
        encoded = [self._encode(event) for event in new_events]
        ids = [row[0] for row, event in zip(encoded, new_events, strict=True) if event.event_id in chosen_ids]
        stream_sql, stream_params = statements.advance_stream(
            stream_id,
            category=category,
            tenant_id=new_events[0].metadata.get("tenant_id") or "",
            count=count,
            expected=expected,
            stamp=stamp,
            event_ids=ids,
            ids_as_array=one_statement,
        )
        with statement_cursor(connection) as cursor:
            if one_statement:
                cursor.execute(
                    *statements.append_in_one_statement(
                        stream_sql, stream_params, (stream_id, category, count, stamp), encoded
                    )
                )
                positions = dict(cursor.fetchall())
                if not positions:
                    return None
                first_version = min(positions)
            else:
                cursor.execute(stream_sql, stream_params)
                row = cursor.fetchone()
                if row is None:
                    return None
                first_version = row[0] - count + 1
                positions = self._insert_rows(
                    cursor, stream_id, category=category, first_version=first_version, encoded=encoded, stamp=stamp
                )
        return [
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

    def _insert_rows(
        self, cursor: Any, stream_id: str, *, category: str, first_version: int, encoded: list[tuple], stamp: Any
    ) -> dict[int, int]:
        rows = [
            (event_id, stream_id, category, first_version + i, event_type, schema_version, data, meta, tenant, stamp)
            for i, (event_id, event_type, schema_version, data, meta, tenant) in enumerate(encoded)
        ]
        positions: dict[int, int] = {}
        for start in range(0, len(rows), INSERT_CHUNK):
            cursor.execute(*statements.insert_events(rows[start : start + INSERT_CHUNK]))
            positions.update(cursor.fetchall())
        return positions

    def _encode(self, event: NewEvent) -> tuple:
        """(event_id, event_type, schema_version, data JSON, metadata JSON, tenant) as the database takes them."""
        native_uuid = connections[self.using].features.has_native_uuid_field
        metadata = dict(event.metadata)
        return (
            event.event_id if native_uuid else event.event_id.hex,
            event.event_type,
            event.schema_version,
            encode_data(event.event_type, event.data, metadata),
            encode_metadata(metadata),
            metadata.get("tenant_id") or "",
        )

    def _resolve_refused(
        self, stream_id: str, new_events: list[NewEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        """Tell an idempotent retry (return the stored result) from a conflict or a reused id (raise)."""
        stored = self._events_with_ids([event.event_id for event in new_events])
        if (result := _same_append(stream_id, new_events, stored)) is not None:
            return result
        if stored:
            raise DuplicateEventIdError(f"Some event ids of this append to {stream_id!r} are already stored.")
        raise ConcurrencyError(stream_id, expected_version, self._current_version(stream_id))

    def _current_version(self, stream_id: str) -> int:
        with statement_cursor(connections[self.using]) as cursor:
            cursor.execute(f"SELECT version FROM {STREAM_TABLE} WHERE stream_id = %s", [stream_id])
            row = cursor.fetchone()
        return row[0] if row else 0

    # ---------------------------------------------------------------- reading
    def read_stream(self, stream_id: str, *, from_version: int = 1, limit: int | None = None) -> list[RecordedEvent]:
        """A stream's events from `from_version` on, in version order; [] if the stream does not exist."""
        sql = f"SELECT {EVENT_COLUMNS} FROM {EVENT_TABLE} WHERE stream_id = %s AND version >= %s ORDER BY version"
        params: list[Any] = [stream_id, from_version]
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        return self._fetch(sql, params, prepared=True)

    def read_all(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        event_types: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        until: int | None = None,
    ) -> list[RecordedEvent]:
        """One batch of the global log: events after position `after`, in position order.

        A reader that keeps passing the last position it saw as `after` sees every
        committed event exactly once: positions become visible in order.

        Args:
            event_types: exact names, or glob patterns such as "Order*".
            categories: stream categories.
            until: the last position to include: a head_position() read before, or
                a position below one. Without it, a PostgreSQL read asks for the head first.
        """
        if until is None and connections[self.using].vendor == "postgresql":
            until = self.head_position()  # read first, in a statement of its own: see head_position
        query = self.log_query(
            after=after,
            limit=limit or es_settings.READ_BATCH_SIZE,
            event_types=event_types,
            categories=categories,
            until=until,
        )
        return [] if query is None else self._fetch(*query)

    def log_query(
        self,
        *,
        after: int,
        limit: int,
        event_types: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        until: int | None = None,
    ) -> tuple[str, list[Any]] | None:
        """The SQL (and parameters) of a read_all batch; None when a filter admits nothing.

        Several exact event types read as one index range each, merged: with
        `event_type IN (...)` the database would gather every matching event
        after `after` and sort them, each batch.
        """
        exact_types = event_types is not None and len(event_types) > 1 and not any(map(_is_glob, event_types))
        if not exact_types:
            where, params = self._where(after=after, until=until, event_types=event_types, categories=categories)
            if where is None:
                return None
            return f"SELECT {EVENT_COLUMNS} FROM {EVENT_TABLE} WHERE {where} ORDER BY position LIMIT %s", [
                *params,
                limit,
            ]
        parts, params = [], []
        for event_type in dict.fromkeys(event_types):  # type: ignore[arg-type]
            where, part_params = self._where(after=after, until=until, event_types=[event_type], categories=categories)
            if where is None:
                return None
            parts.append(
                f"SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS} FROM {EVENT_TABLE} WHERE {where}"
                f" ORDER BY position LIMIT %s) AS by_type_{len(parts)}"
            )
            params.extend([*part_params, limit])
        sql = f"SELECT {EVENT_COLUMNS} FROM ({' UNION ALL '.join(parts)}) AS merged ORDER BY position LIMIT %s"
        return sql, [*params, limit]

    def matching_events_sql(
        self,
        *,
        after: int = 0,
        event_types: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
    ) -> tuple[str, list[Any]]:
        """SQL selecting the positions read_all would return (no limit), e.g. to count a lag."""
        where, params = self._where(after=after, until=None, event_types=event_types, categories=categories)
        return f"SELECT position FROM {EVENT_TABLE} WHERE {where or '1 = 0'}", params

    def _where(
        self,
        *,
        after: int,
        until: int | None,
        event_types: Sequence[str] | None,
        categories: Sequence[str] | None,
    ) -> tuple[str | None, list[Any]]:
        """The WHERE clause of a log read; None when a filter is an empty list (nothing matches)."""
        clauses, params = ["position > %s"], [after]
        if until is not None:
            clauses.append("position <= %s")
            params.append(until)
        for column, wanted in (("event_type", event_types), ("category", categories)):
            if wanted is not None:
                values = list(wanted)
                if not values:
                    return None, []
                clause, clause_params = _matching(column, values, connections[self.using].vendor)
                clauses.append(clause)
                params.extend(clause_params)
        return " AND ".join(clauses), params

    def iter_all(
        self,
        *,
        after: int = 0,
        batch_size: int | None = None,
        event_types: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        until: int | None = None,
    ) -> Iterator[RecordedEvent]:
        """The global log after `after` (up to `until`, as read_all), read lazily in batches of `batch_size`."""
        batch_size = batch_size or es_settings.READ_BATCH_SIZE
        while batch := self.read_all(
            after=after, limit=batch_size, event_types=event_types, categories=categories, until=until
        ):
            yield from batch
            after = batch[-1].position
            if len(batch) < batch_size:
                return

    def head_position(self) -> int:
        """How far a reader may follow the global log now (0 when it is empty).

        Every event at or below it that will ever be committed is committed already, so a
        reader that reads up to it (in a later statement) and goes on from there never skips
        one. On PostgreSQL it stops below the first position another transaction still
        writing may take (docs/event-store.md, "Gap-free global log"); holes left by rolled
        back appends are passed. On SQLite, whose writers are serialised, it is the highest
        committed position.
        """
        connection = connections[self.using]
        if connection.vendor != "postgresql":
            return self.last_position()
        with connection.cursor() as cursor:
            cursor.execute(SAFE_HEAD_SQL)
            return cursor.fetchone()[0] or 0

    def last_position(self) -> int:
        """The highest committed position (0 for an empty log): readers may not reach it yet.

        Past head_position() while a transaction that appended below it is still in flight.
        """
        with connections[self.using].cursor() as cursor:
            cursor.execute(f"SELECT MAX(position) FROM {EVENT_TABLE}")
            return cursor.fetchone()[0] or 0

    def stream_info(self, stream_id: str) -> StreamInfo:
        """Version and timestamps of a stream. Raises StreamNotFoundError if it has no events."""
        with statement_cursor(connections[self.using]) as cursor:
            cursor.execute(
                f"SELECT stream_id, category, version, created_at, updated_at FROM {STREAM_TABLE} WHERE stream_id = %s",
                [stream_id],
            )
            row = cursor.fetchone()
        if row is None:
            raise StreamNotFoundError(stream_id)
        return StreamInfo(row[0], row[1], row[2], self._datetime(row[3]), self._datetime(row[4]))

    def _events_with_ids(self, event_ids: list[uuid.UUID]) -> list[RecordedEvent]:
        native_uuid = connections[self.using].features.has_native_uuid_field
        values = [event_id if native_uuid else event_id.hex for event_id in event_ids]
        marks = ", ".join(["%s"] * len(values))
        return self._fetch(
            f"SELECT {EVENT_COLUMNS} FROM {EVENT_TABLE} WHERE event_id IN ({marks}) ORDER BY position", values
        )

    def _fetch(self, sql: str, params: list[Any], *, prepared: bool = False) -> list[RecordedEvent]:
        """Rows of EVENT_COLUMNS as RecordedEvents.

        `prepared` only for lookups by key (a stream's events), whose best plan is the same for
        any parameters. A log read's plan depends on them (how far back `after` is, how common
        the types and categories asked for are): a prepared one could keep a generic plan that
        suits one reader and scans half the table for another.
        """
        connection = connections[self.using]
        with statement_cursor(connection) if prepared else connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return [self.record(row) for row in rows]

    def record(self, row: tuple) -> RecordedEvent:
        """A RecordedEvent from a row of EVENT_COLUMNS (for queries that read events beside other rows)."""
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
        """An aware datetime from a timestamp column, read as such or as text (naive means UTC, as Django stores it)."""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value if value.utcoffset() == ZERO else value.astimezone(UTC)


def _matching(column: str, values: list[str], vendor: str) -> tuple[str, list[Any]]:
    """SQL matching a column against exact values and glob patterns ("Order*", "Stock?dded").

    Case-sensitive on both databases: SQLite's GLOB takes the pattern as it is,
    PostgreSQL's LIKE gets it translated with `%` and `_` escaped.
    """
    exact = [value for value in values if not _is_glob(value)]
    patterns = [value for value in values if _is_glob(value)]
    alternatives, params = [], []
    if exact:
        alternatives.append(f"{column} IN ({', '.join(['%s'] * len(exact))})")
        params.extend(exact)
    for pattern in patterns:
        if vendor == "sqlite":
            alternatives.append(f"{column} GLOB %s")
            params.append(pattern)
        else:
            like = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            alternatives.append(f"{column} LIKE %s ESCAPE '\\'")
            params.append(like.replace("*", "%").replace("?", "_"))
    return f"({' OR '.join(alternatives)})", params


def _is_glob(value: str) -> bool:
    return "*" in value or "?" in value


def _wants(hook: Any, event_types: set[str]) -> bool:
    """A hook may declare `wants(event_types)`, so appends it ignores skip it (and its transaction)."""
    wants = getattr(hook, "wants", None)
    return wants is None or wants(event_types)


def _same_append(stream_id: str, new_events: list[NewEvent], stored: list[RecordedEvent]) -> AppendResult | None:
    """The stored result if `stored` is exactly this append (same ids, stream and order), else None."""
    by_id = {event.event_id: event for event in stored}
    recorded = [by_id.get(event.event_id) for event in new_events]
    if any(event is None or event.stream_id != stream_id for event in recorded):
        return None
    versions = [event.version for event in recorded]  # type: ignore[union-attr]
    if versions != list(range(versions[0], versions[0] + len(versions))):
        return None
    return AppendResult(stream_id=stream_id, version=versions[-1], events=recorded)  # type: ignore[arg-type]


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


__all__ = ["EventStore", "category_of"]
