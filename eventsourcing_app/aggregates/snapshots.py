"""Snapshots: an aggregate's state saved every N events, so loading replays only the tail."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import msgspec
from django.db import connections
from django.utils import timezone

from ..conf import es_settings
from ..store import EventStore
from ..store.cursors import statement_cursor
from ..store.statements import EVENT_COLUMNS, EVENT_TABLE
from .base import Aggregate

A = TypeVar("A", bound=Aggregate)

logger = logging.getLogger(__name__)

SNAPSHOT_TABLE = "eventsourcing_snapshot"
_encoder = msgspec.json.Encoder(decimal_format="string")


def snapshot_interval(aggregate_class: type[Aggregate]) -> int | None:
    """Events between snapshots: EVENTSOURCING['SNAPSHOT_EVERY'][category], else the class's own."""
    return es_settings.SNAPSHOT_EVERY.get(aggregate_class.category, aggregate_class.snapshot_every)


def aggregate_type_name(aggregate_class: type[Aggregate]) -> str:
    return f"{aggregate_class.__module__}.{aggregate_class.__qualname__}"


class SnapshotStore:
    """Reads and replaces the one snapshot per stream in the `Snapshot` table."""

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def save(self, aggregate: Aggregate) -> None:
        """Replace the stream's snapshot with the aggregate's current state, unless a newer one is stored."""
        connection = connections[self.using]
        stamp = connection.ops.adapt_datetimefield_value(timezone.now())
        with statement_cursor(connection) as cursor:
            cursor.execute(
                f"INSERT INTO {SNAPSHOT_TABLE} (stream_id, aggregate_type, version, state, created_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (stream_id) DO UPDATE SET"
                " aggregate_type = excluded.aggregate_type, version = excluded.version,"
                f" state = excluded.state, created_at = excluded.created_at"
                f" WHERE {SNAPSHOT_TABLE}.version < excluded.version",
                [
                    aggregate.stream_id,
                    aggregate_type_name(type(aggregate)),
                    aggregate.version,
                    _encoder.encode(aggregate.snapshot_state()).decode(),
                    stamp,
                ],
            )

    def load_with_tail(self, aggregate_class: type[A], aggregate_id: Any, store: EventStore) -> tuple[A, list]:
        """The aggregate as of its snapshot (or new) and the stream's events after it, in one query.

        The snapshot row rides along the tail in a UNION ALL (its position is NULL and its version
        below every tail event's), so a load costs one round trip with or without a snapshot.
        """
        stream_id = f"{aggregate_class.category}-{aggregate_id}"
        type_name = aggregate_type_name(aggregate_class)
        snapshot = f"FROM {SNAPSHOT_TABLE} WHERE stream_id = %s AND aggregate_type = %s"
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM {EVENT_TABLE} WHERE stream_id = %s"
            f" AND version > COALESCE((SELECT version {snapshot}), 0)"
            f" UNION ALL SELECT NULL, NULL, NULL, version, NULL, NULL, state, NULL, NULL {snapshot} ORDER BY 4"
        )
        with statement_cursor(connections[self.using]) as cursor:
            cursor.execute(sql, [stream_id, stream_id, type_name, stream_id, type_name])
            rows = cursor.fetchall()
        if rows and rows[0][0] is None:
            aggregate = self._rebuild(aggregate_class, aggregate_id, rows[0][3], rows[0][6])
            if aggregate is not None:
                return aggregate, [store.record(row) for row in rows[1:]]
            return aggregate_class(aggregate_id), store.read_stream(stream_id)
        return aggregate_class(aggregate_id), [store.record(row) for row in rows]

    @staticmethod
    def _rebuild(aggregate_class: type[A], aggregate_id: Any, version: int, state: Any) -> A | None:
        state = state if isinstance(state, dict) else msgspec.json.decode(state)
        try:
            return aggregate_class.from_snapshot(aggregate_id, version, state)  # type: ignore[return-value]
        except (msgspec.ValidationError, TypeError, ValueError) as exc:
            logger.warning("Ignoring the snapshot of %s-%s: %s", aggregate_class.category, aggregate_id, exc)
            return None
