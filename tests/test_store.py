"""EventStore behaviour through its public API: expected versions, atomicity, idempotency, reads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.db import connection, transaction

from eventsourcing_app.exceptions import (
    ConcurrencyError,
    DuplicateEventIdError,
    InvalidStreamIdError,
    StreamNotFoundError,
)
from eventsourcing_app.models import Event, Stream
from eventsourcing_app.store import ANY, NO_STREAM, STREAM_EXISTS, DomainEvent, EventStore, NewEvent
from project.shop.events import StockAdded

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Noted(DomainEvent, event_type="tests.store.Noted"):
    text: str


def stream() -> str:
    return f"Note-{uuid.uuid4()}"


def notes(*texts: str) -> list[Noted]:
    return [Noted(text) for text in texts]


class TestExpectedVersion:
    def test_no_stream_creates_and_then_conflicts(self, event_store: EventStore) -> None:
        sid = stream()
        result = event_store.append(sid, notes("a"), expected_version=NO_STREAM)
        assert result.version == 1
        with pytest.raises(ConcurrencyError) as excinfo:
            event_store.append(sid, notes("b"), expected_version=NO_STREAM)
        assert (excinfo.value.expected, excinfo.value.actual, excinfo.value.stream_id) == (NO_STREAM, 1, sid)

    def test_zero_means_no_stream(self, event_store: EventStore) -> None:
        sid = stream()
        event_store.append(sid, notes("a"), expected_version=0)
        with pytest.raises(ConcurrencyError):
            event_store.append(sid, notes("b"), expected_version=0)

    def test_stream_exists(self, event_store: EventStore) -> None:
        sid = stream()
        with pytest.raises(ConcurrencyError) as excinfo:
            event_store.append(sid, notes("a"), expected_version=STREAM_EXISTS)
        assert excinfo.value.actual == 0
        event_store.append(sid, notes("a"))
        assert event_store.append(sid, notes("b"), expected_version=STREAM_EXISTS).version == 2

    def test_exact_version(self, event_store: EventStore) -> None:
        sid = stream()
        event_store.append(sid, notes("a", "b"))
        assert event_store.append(sid, notes("c"), expected_version=2).version == 3
        with pytest.raises(ConcurrencyError) as excinfo:
            event_store.append(sid, notes("d"), expected_version=2)
        assert (excinfo.value.expected, excinfo.value.actual) == (2, 3)
        assert "expected version 2, actual version 3" in str(excinfo.value)

    def test_any_appends_whatever_the_version(self, event_store: EventStore) -> None:
        sid = stream()
        assert event_store.append(sid, notes("a"), expected_version=ANY).version == 1
        assert event_store.append(sid, notes("b", "c"), expected_version=ANY).version == 3

    @pytest.mark.parametrize("bad", [-1, "1", 1.5, True, None])
    def test_bad_expected_version_is_refused(self, event_store: EventStore, bad: object) -> None:
        with pytest.raises(ValueError, match="expected_version"):
            event_store.append(stream(), notes("a"), expected_version=bad)  # type: ignore[arg-type]

    def test_a_conflict_appends_nothing(self, event_store: EventStore) -> None:
        sid = stream()
        event_store.append(sid, notes("a"))
        with pytest.raises(ConcurrencyError):
            event_store.append(sid, notes("b", "c"), expected_version=5)
        assert [e.data.text for e in event_store.read_stream(sid)] == ["a"]


class TestAtomicity:
    def test_multi_event_append_gets_consecutive_versions_and_positions(self, event_store: EventStore) -> None:
        sid = stream()
        result = event_store.append(sid, notes("a", "b", "c"))
        assert [e.version for e in result.events] == [1, 2, 3]
        positions = [e.position for e in result.events]
        assert positions == sorted(positions)
        assert len(set(positions)) == 3

    def test_rolled_back_transaction_leaves_nothing(self, event_store: EventStore) -> None:
        sid = stream()

        def command_that_fails_after_appending() -> None:
            with transaction.atomic():
                event_store.append(sid, notes("a", "b"))
                raise RuntimeError("the command failed after appending")

        with pytest.raises(RuntimeError):
            command_that_fails_after_appending()
        assert event_store.read_stream(sid) == []
        assert not Stream.objects.filter(stream_id=sid).exists()

    def test_failing_append_hook_rolls_the_events_back(self, event_store: EventStore, settings) -> None:
        settings.EVENTSOURCING = {"APPEND_HOOKS": ["tests.test_store.failing_hook"]}
        sid = stream()

        def append_in_a_savepoint() -> None:
            # An append inside a transaction adds no savepoint of its own (it would cost two
            # round trips): like any failed statement, its failure dooms the enclosing
            # transaction, so callers that want to carry on wrap it in atomic().
            with transaction.atomic():
                event_store.append(sid, notes("a"))

        with pytest.raises(RuntimeError, match="hook failed"):
            append_in_a_savepoint()
        assert not Event.objects.filter(stream_id=sid).exists()

    def test_append_hooks_see_recorded_events_inside_the_transaction(self, event_store: EventStore, settings) -> None:
        settings.EVENTSOURCING = {"APPEND_HOOKS": ["tests.test_store.recording_hook"]}
        recorded_by_hook.clear()
        result = event_store.append(stream(), notes("a", "b"))
        assert recorded_by_hook == [result.events]

    def test_empty_append_is_refused(self, event_store: EventStore) -> None:
        with pytest.raises(ValueError, match="at least one event"):
            event_store.append(stream(), [])

    @pytest.mark.parametrize("bad", ["nodash", "-id", "Category-", "", "x" * 101 + "-1"])
    def test_malformed_stream_ids_are_refused(self, event_store: EventStore, bad: str) -> None:
        with pytest.raises(InvalidStreamIdError):
            event_store.append(bad, notes("a"))

    def test_only_events_are_accepted(self, event_store: EventStore) -> None:
        with pytest.raises(TypeError):
            event_store.append(stream(), [{"text": "a"}])  # type: ignore[list-item]


recorded_by_hook: list = []


def recording_hook(events: list) -> None:
    assert transaction.get_connection().in_atomic_block
    recorded_by_hook.append(events)


def failing_hook(events: list) -> None:
    raise RuntimeError("hook failed")


class TestIdempotency:
    def test_same_event_ids_again_return_the_stored_result(self, event_store: EventStore) -> None:
        sid = stream()
        batch = [NewEvent.of(Noted("a")), NewEvent.of(Noted("b"))]
        first = event_store.append(sid, batch, expected_version=NO_STREAM)
        again = event_store.append(sid, batch, expected_version=NO_STREAM)
        assert again.version == first.version == 2
        assert [e.position for e in again.events] == [e.position for e in first.events]
        assert Event.objects.filter(stream_id=sid).count() == 2

    def test_retry_with_any_is_a_no_op(self, event_store: EventStore) -> None:
        sid = stream()
        event = NewEvent.of(Noted("a"))
        event_store.append(sid, [event])
        event_store.append(sid, [event])
        assert event_store.stream_info(sid).version == 1

    def test_an_event_id_stored_in_another_stream_is_refused(self, event_store: EventStore) -> None:
        event = NewEvent.of(Noted("a"))
        event_store.append(stream(), [event])
        other = stream()
        with pytest.raises(DuplicateEventIdError):
            event_store.append(other, [event])
        assert event_store.read_stream(other) == []

    def test_partly_stored_batch_is_refused_whole(self, event_store: EventStore) -> None:
        sid = stream()
        stored = NewEvent.of(Noted("a"))
        event_store.append(sid, [stored])
        with pytest.raises(DuplicateEventIdError):
            event_store.append(sid, [NewEvent.of(Noted("b")), stored])
        assert event_store.stream_info(sid).version == 1


class TestMetadata:
    def test_metadata_is_stored_with_ids_as_strings(self, event_store: EventStore) -> None:
        correlation, user = uuid.uuid4(), 42
        sid = stream()
        event_store.append(
            sid,
            [NewEvent.of(Noted("a"), metadata={"causation_id": "cmd-1", "custom": {"ip": "10.0.0.1", "n": 1}})],
            metadata={"correlation_id": correlation, "user_id": user, "tenant_id": "acme"},
        )
        (event,) = event_store.read_stream(sid)
        assert event.metadata == {
            "correlation_id": str(correlation),
            "causation_id": "cmd-1",
            "user_id": "42",
            "tenant_id": "acme",
            "custom": {"ip": "10.0.0.1", "n": 1},
        }

    def test_event_metadata_wins_over_append_metadata(self, event_store: EventStore) -> None:
        sid = stream()
        event_store.append(sid, [NewEvent.of(Noted("a"), metadata={"user_id": "own"})], metadata={"user_id": "shared"})
        assert event_store.read_stream(sid)[0].metadata["user_id"] == "own"

    def test_unknown_metadata_keys_are_refused(self, event_store: EventStore) -> None:
        with pytest.raises(ValueError, match="Unknown metadata keys"):
            event_store.append(stream(), notes("a"), metadata={"colour": "red"})  # type: ignore[typeddict-unknown-key]


class TestReading:
    def test_read_stream_from_a_version(self, event_store: EventStore) -> None:
        sid = stream()
        event_store.append(sid, notes("a", "b", "c", "d"))
        assert [e.data.text for e in event_store.read_stream(sid, from_version=3)] == ["c", "d"]
        assert [e.version for e in event_store.read_stream(sid, from_version=2, limit=2)] == [2, 3]

    def test_read_missing_stream_is_empty(self, event_store: EventStore) -> None:
        assert event_store.read_stream(stream()) == []

    def test_recorded_event_fields(self, event_store: EventStore) -> None:
        sid = stream()
        new = NewEvent.of(Noted("a"))
        event_store.append(sid, [new])
        (event,) = event_store.read_stream(sid)
        assert event.event_id == new.event_id
        assert (event.stream_id, event.category, event.version) == (sid, "Note", 1)
        assert (event.event_type, event.schema_version) == ("tests.store.Noted", 1)
        assert event.recorded_at.tzinfo is not None

    def test_the_recorded_time_reads_back_as_the_same_instant_in_utc(self, event_store: EventStore) -> None:
        sid = stream()
        appended = event_store.append(sid, notes("a")).events[0]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:  # the session's time zone decides how timestamps are written out
                cursor.execute("SET TIME ZONE 'Asia/Kolkata'")
        (event,) = event_store.read_stream(sid)
        assert event.recorded_at == appended.recorded_at
        assert event.recorded_at.utcoffset() == timedelta(0)

    def test_unregistered_event_types_read_back_as_dicts(self, event_store: EventStore) -> None:
        sid = stream()
        event_store.append(sid, [NewEvent("legacy.Thing", {"a": [1, {"b": "c"}]})])
        assert event_store.read_stream(sid)[0].data == {"a": [1, {"b": "c"}]}

    def test_read_all_after_a_position_in_order(self, event_store: EventStore) -> None:
        start = event_store.head_position()
        sids = [stream() for _ in range(3)]
        for sid in sids:
            event_store.append(sid, notes("x", "y"))
        events = event_store.read_all(after=start)
        assert [e.stream_id for e in events] == [s for s in sids for _ in range(2)]
        assert event_store.read_all(after=events[2].position) == events[3:]

    def test_read_all_filters_by_type_and_category(self, event_store: EventStore) -> None:
        start = event_store.head_position()
        event_store.append(stream(), notes("a"))
        event_store.append("Inventory-SKU-9", [StockAdded(sku="SKU-9", quantity=1)])
        assert {e.event_type for e in event_store.read_all(after=start, event_types=["StockAdded"])} == {"StockAdded"}
        assert {e.category for e in event_store.read_all(after=start, categories=["Note"])} == {"Note"}
        assert len(event_store.read_all(after=start, event_types=["StockAdded", "tests.store.Noted"])) == 2
        assert event_store.read_all(after=start, event_types=[]) == []
        assert event_store.read_all(after=start, event_types=["StockAdded"], categories=["Note"]) == []

    def test_iter_all_reads_in_batches(self, event_store: EventStore, django_assert_num_queries) -> None:
        start = event_store.head_position()
        for _ in range(7):
            event_store.append(stream(), notes("a"))
        # Batches of 2, 2, 2, 1; on PostgreSQL each is read up to a head asked for first.
        with django_assert_num_queries(8 if connection.vendor == "postgresql" else 4):
            events = list(event_store.iter_all(after=start, batch_size=2))
        assert len(events) == 7
        assert [e.position for e in events] == sorted(e.position for e in events)

    def test_stream_info(self, event_store: EventStore) -> None:
        sid = stream()
        event_store.append(sid, notes("a", "b"))
        info = event_store.stream_info(sid)
        assert (info.stream_id, info.category, info.version) == (sid, "Note", 2)
        assert info.created_at <= info.updated_at
        with pytest.raises(StreamNotFoundError):
            event_store.stream_info(stream())

    def test_head_position(self, event_store: EventStore) -> None:
        result = event_store.append(stream(), notes("a", "b"))
        assert event_store.head_position() == result.last_position
