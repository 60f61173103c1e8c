"""Snapshots: an aggregate's state saved every N events, so loading replays only the tail."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import msgspec
from django.db import connections
from django.utils import timezone

from ..conf import es_settings
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
        with connection.cursor() as cursor:
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

    def load(self, aggregate_class: type[A], aggregate_id: Any) -> A | None:
        """The aggregate as of its snapshot, or None if there is none usable.

        A snapshot taken by another class (renamed or replaced) or whose state no
        longer fits the class is ignored: the aggregate is then replayed in full.
        """
        stream_id = f"{aggregate_class.category}-{aggregate_id}"
        with connections[self.using].cursor() as cursor:
            cursor.execute(
                f"SELECT aggregate_type, version, state FROM {SNAPSHOT_TABLE} WHERE stream_id = %s", [stream_id]
            )
            row = cursor.fetchone()
        if row is None or row[0] != aggregate_type_name(aggregate_class):
            return None
        state = row[2] if isinstance(row[2], dict) else msgspec.json.decode(row[2])
        try:
            return aggregate_class.from_snapshot(aggregate_id, row[1], state)  # type: ignore[return-value]
        except (msgspec.ValidationError, TypeError, ValueError) as exc:
            logger.warning("Ignoring the snapshot of %s: %s", stream_id, exc)
            return None
