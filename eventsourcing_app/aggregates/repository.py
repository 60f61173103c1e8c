"""Load aggregates from their streams and save their new events."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from ..exceptions import StreamNotFoundError
from ..store import NO_STREAM, AppendResult, EventStore, Metadata
from .base import Aggregate
from .snapshots import SnapshotStore, snapshot_interval

A = TypeVar("A", bound=Aggregate)


class Repository(Generic[A]):
    """Loads and saves one aggregate class.

    Saving appends the pending events with the loaded version as the expected
    version, so two writers that loaded the same version cannot both win: the
    second gets a `ConcurrencyError` and can reload and retry.
    """

    def __init__(self, aggregate_class: type[A], *, store: EventStore | None = None) -> None:
        self.aggregate_class = aggregate_class
        self.store = store or EventStore()
        self.snapshots = SnapshotStore(using=self.store.using)

    def load(self, aggregate_id: Any) -> A:
        """The aggregate rebuilt from its snapshot (if any) and the events after it.

        Raises:
            StreamNotFoundError: the aggregate has no events.
        """
        if snapshot_interval(self.aggregate_class):
            aggregate, events = self.snapshots.load_with_tail(self.aggregate_class, aggregate_id, self.store)
        else:
            aggregate = self.aggregate_class(aggregate_id)
            events = self.store.read_stream(aggregate.stream_id)
        if not events and aggregate.version == 0:
            raise StreamNotFoundError(aggregate.stream_id)
        for event in events:
            aggregate.apply(event.data)
        return aggregate

    def load_or_new(self, aggregate_id: Any) -> A:
        """The stored aggregate, or a new one (version 0) if it has no events yet."""
        try:
            return self.load(aggregate_id)
        except StreamNotFoundError:
            return self.aggregate_class(aggregate_id)

    def exists(self, aggregate_id: Any) -> bool:
        try:
            self.store.stream_info(self.aggregate_class(aggregate_id).stream_id)
        except StreamNotFoundError:
            return False
        return True

    def save(self, aggregate: A, *, metadata: Metadata | None = None) -> AppendResult | None:
        """Append the aggregate's pending events; None if it has none.

        Raises:
            ConcurrencyError: the stream moved on since the aggregate was loaded.
        """
        pending = aggregate.pending_events
        if not pending:
            return None
        loaded_version = aggregate.loaded_version
        result = self.store.append(
            aggregate.stream_id,
            pending,
            expected_version=loaded_version or NO_STREAM,
            metadata=metadata,
        )
        aggregate.mark_saved()
        every = snapshot_interval(self.aggregate_class)
        if every and result.version // every > loaded_version // every:
            self.snapshots.save(aggregate)
        return result
