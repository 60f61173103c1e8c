"""The Projection API and how projections hear of appends: inline, live and async nudges."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from eventsourcing_app.exceptions import ProjectionNotFoundError
from eventsourcing_app.projections import (
    INLINE,
    LIVE,
    Projection,
    ProjectionRunner,
    on,
    projection_registry,
    projection_statuses,
)
from eventsourcing_app.projections.hooks import enqueue_projection, pending_key
from eventsourcing_app.store import EventStore, NewEvent, RecordedEvent
from tests.projection_workers import LedgerProjection, expected_ledger, ledger_state, reset_ledger, tick


class Registered(list):
    """Projections registered for one test: `append()` registers one."""

    def append(self, projection: Projection) -> None:
        projection_registry.register(projection.name, projection)
        super().append(projection)


@pytest.fixture
def registered() -> Iterator[Registered]:
    """Register projections for one test; they are unregistered (and their pending marks dropped) afterwards."""
    projections = Registered()
    yield projections
    for projection in projections:
        projection_registry.unregister(projection.name)
        cache.delete(pending_key(projection.name))


class RollBack(Exception):
    """Raised to roll a test's transaction back."""


@contextmanager
def rolled_back() -> Iterator[None]:
    """A transaction that is rolled back when the block ends."""
    with suppress(RollBack), transaction.atomic():
        yield
        raise RollBack


# ---------------------------------------------------------------- the API
class TestDeclaration:
    def test_the_default_name_is_the_class_name_in_snake_case_without_projection(self) -> None:
        class OrderHistoryProjection(Projection):
            pass

        class HTTPRequestStats(Projection):
            pass

        class Shipments(Projection):
            name = "my_shipments"

        assert OrderHistoryProjection.name == "order_history"
        assert HTTPRequestStats.name == "http_request_stats"
        assert Shipments.name == "my_shipments"

    def test_event_types_default_to_those_of_the_handlers(self) -> None:
        class Orders(Projection):
            @on("OrderPlaced")
            def placed(self, event: RecordedEvent) -> None: ...

            @on("OrderShipped", "OrderCancelled")
            def closed(self, event: RecordedEvent) -> None: ...

        class MoreOrders(Orders):
            @on("OrderConfirmed")
            def confirmed(self, event: RecordedEvent) -> None: ...

        assert Orders.event_types == ("OrderCancelled", "OrderPlaced", "OrderShipped")
        assert MoreOrders.event_types == ("OrderCancelled", "OrderConfirmed", "OrderPlaced", "OrderShipped")
        assert Orders().wants("OrderPlaced")
        assert not Orders().wants("StockAdded")

    def test_handlers_receive_their_events_and_others_are_ignored(self) -> None:
        seen: list[str] = []

        class Orders(Projection):
            event_types = ("Order*",)

            @on("OrderPlaced")
            def placed(self, event: RecordedEvent) -> None:
                seen.append(event.event_type)

        events = [_recorded("OrderPlaced"), _recorded("OrderShipped"), _recorded("StockAdded")]
        Orders().handle_batch(events)
        assert seen == ["OrderPlaced"]

    @pytest.mark.parametrize(
        ("attribute", "value"), [("kind", "sometimes"), ("kind", "ASYNC"), ("on_error", "ignore"), ("on_error", None)]
    )
    def test_an_invalid_kind_or_error_policy_is_refused_when_the_class_is_defined(
        self, attribute: str, value: object
    ) -> None:
        with pytest.raises(ValueError, match=attribute):
            type("Broken", (Projection,), {attribute: value})

    @pytest.mark.parametrize(
        ("patterns", "event_type", "wanted"),
        [
            (("Order*",), "OrderPlaced", True),
            (("Order*",), "orderPlaced", False),
            (("Order*",), "StockAdded", False),
            (("Stock?dded",), "StockAdded", True),
            (("OrderPlaced",), "OrderPlacedLater", False),
            ((), "Anything", True),
        ],
    )
    def test_wants_matches_exact_names_and_case_sensitive_globs(
        self, patterns: tuple[str, ...], event_type: str, wanted: bool
    ) -> None:
        projection = type("Globbing", (Projection,), {"event_types": patterns})()
        assert projection.wants(event_type) is wanted

    def test_categories_narrow_what_is_wanted(self) -> None:
        projection = type("Categorised", (Projection,), {"event_types": ("Order*",), "categories": ("Order",)})()
        assert projection.wants("OrderPlaced", "Order")
        assert not projection.wants("OrderPlaced", "Archive")
        assert projection.wants("OrderPlaced")  # no category given: the type decides (as append hooks ask)

    def test_unknown_names_are_refused_listing_the_known_ones(self) -> None:
        with pytest.raises(ProjectionNotFoundError, match="order_summary"):
            projection_registry.lookup("no_such_projection")


def _recorded(event_type: str, stream_id: str = "Order-1", position: int = 1) -> RecordedEvent:
    return RecordedEvent(position, uuid.uuid4(), stream_id, 1, event_type, 1, {}, {}, timezone.now())


# ------------------------------------------------------ globs in the log (both databases)
GLOB_TYPES = ["GlobAlpha", "globAlpha", "Glob_Beta", "GlobXBeta", "Glob%Gamma", "GlobZGamma", "OtherType"]


@pytest.mark.django_db
class TestSelectingEventsFromTheLog:
    """The same selection by the SQL read (GLOB on SQLite, LIKE on PostgreSQL) and by `wants()`."""

    @pytest.fixture
    def log(self, event_store: EventStore) -> list[RecordedEvent]:
        events = []
        for category in ("Glob", "Elsewhere", "Glob_x", "GlobXx"):
            events += event_store.append(f"{category}-1", [NewEvent(t, {}) for t in GLOB_TYPES]).events
        return events

    @pytest.mark.parametrize(
        ("patterns", "expected"),
        [
            (["Glob*"], ["GlobAlpha", "Glob_Beta", "GlobXBeta", "Glob%Gamma", "GlobZGamma"]),
            (["glob*"], ["globAlpha"]),
            (["GlobAlpha"], ["GlobAlpha"]),
            (["Glob_B*"], ["Glob_Beta"]),
            (["Glob%G*"], ["Glob%Gamma"]),
            (["Glob?Beta"], ["Glob_Beta", "GlobXBeta"]),
            (["*Gamma", "OtherType"], ["Glob%Gamma", "GlobZGamma", "OtherType"]),
            (["GLOB*"], []),
        ],
    )
    def test_patterns_are_case_sensitive_and_underscore_and_percent_are_literal(
        self, event_store: EventStore, log: list[RecordedEvent], patterns: list[str], expected: list[str]
    ) -> None:
        read = event_store.read_all(event_types=patterns, categories=["Glob"])
        assert [e.event_type for e in read] == expected
        projection = type("Selective", (Projection,), {"event_types": tuple(patterns)})()
        assert [e.event_type for e in log if e.category == "Glob" and projection.wants(e.event_type)] == expected

    @pytest.mark.parametrize(
        ("categories", "expected"),
        [
            (["Glob"], ["Glob-1"]),
            (["Glob_x"], ["Glob_x-1"]),
            (["Glob_*"], ["Glob_x-1"]),
            (["Glob*"], ["Glob-1", "Glob_x-1", "GlobXx-1"]),
            (["glob*"], []),
        ],
    )
    def test_categories_select_exactly_or_by_case_sensitive_globs(
        self, event_store: EventStore, log: list[RecordedEvent], categories: list[str], expected: list[str]
    ) -> None:
        read = event_store.read_all(event_types=["GlobAlpha"], categories=categories)
        assert [e.stream_id for e in read] == expected
        projection = type("ByCategory", (Projection,), {"categories": tuple(categories)})()
        wanted = [
            e.stream_id for e in log if e.event_type == "GlobAlpha" and projection.wants(e.event_type, e.category)
        ]
        assert wanted == expected

    def test_a_runner_applies_exactly_the_selected_events(
        self, event_store: EventStore, log: list[RecordedEvent]
    ) -> None:
        applied: list[RecordedEvent] = []

        class Selective(Projection):
            event_types = ("Glob_B*", "glob*")
            categories = ("Glob",)

            def handle_batch(self, events: list[RecordedEvent]) -> None:
                applied.extend(events)

        ProjectionRunner(Selective(), batch_size=2).run()
        assert [(e.stream_id, e.event_type) for e in applied] == [("Glob-1", "globAlpha"), ("Glob-1", "Glob_Beta")]

    def test_the_lag_counts_only_wanted_events(
        self, event_store: EventStore, log: list[RecordedEvent], registered: Registered
    ) -> None:
        class GlobLag(Projection):
            name = "glob_lag"
            event_types = ("Glob?Beta",)
            categories = ("Glob", "Elsewhere")

            def handle_batch(self, events: list[RecordedEvent]) -> None:
                pass

        registered.append(GlobLag())
        (status,) = [s for s in projection_statuses() if s.name == "glob_lag"]
        assert (status.position, status.lag, status.head) == (0, 4, log[-1].position)


# ------------------------------------------------------------------ inline
class InlineLedger(LedgerProjection):
    name = "inline_ledger"
    kind = INLINE

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        if any(event.data["poison"] for event in events):
            raise ValueError("the inline projection refuses poison")
        super().handle_batch(events)


class TestInlineProjections:
    @pytest.mark.django_db
    def test_they_write_in_the_appends_transaction(self, event_store: EventStore, registered: Registered) -> None:
        registered.append(InlineLedger())
        reset_ledger("inline_ledger")
        with rolled_back():
            event_store.append("Ledger-inline", [tick(3), tick(4)])
            assert ledger_state("inline_ledger").amount == 7  # visible at once, in the same transaction
        assert ledger_state("inline_ledger").applied == 0
        appended = event_store.append("Ledger-inline", [tick(5)]).events
        assert ledger_state("inline_ledger") == expected_ledger("inline_ledger", wanted=appended)

    @pytest.mark.django_db(transaction=True)
    def test_a_failing_inline_projection_fails_the_append(
        self, event_store: EventStore, registered: Registered
    ) -> None:
        registered.append(InlineLedger())
        reset_ledger("inline_ledger")
        head = event_store.head_position()
        with pytest.raises(ValueError, match="refuses poison"):
            event_store.append("Ledger-inline", [tick(1), tick(2, poison=True)])
        assert event_store.read_all(after=head) == []
        assert event_store.read_stream("Ledger-inline") == []
        assert ledger_state("inline_ledger").applied == 0

    @pytest.mark.django_db
    def test_they_see_only_the_events_they_want(self, event_store: EventStore, registered: Registered) -> None:
        registered.append(InlineLedger())
        reset_ledger("inline_ledger")
        event_store.append("Elsewhere-1", [tick(1)])  # a tick, but not in the Ledger category
        event_store.append("Ledger-1", [NewEvent("Unrelated", {}), tick(2)])
        assert (ledger_state("inline_ledger").applied, ledger_state("inline_ledger").amount) == (1, 2)


# -------------------------------------------------------------------- live
class LiveRecorder(Projection):
    name = "live_recorder"
    kind = LIVE
    event_types = ("LedgerTick",)

    def __init__(self) -> None:
        self.seen: list[int] = []

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        if any(event.data["poison"] for event in events):
            raise ValueError("the live projection refuses poison")
        self.seen.extend(event.data["amount"] for event in events)


@pytest.mark.django_db
class TestLiveProjections:
    def test_they_are_told_after_the_commit_only(
        self, event_store: EventStore, registered: Registered, django_capture_on_commit_callbacks
    ) -> None:
        live = LiveRecorder()
        registered.append(live)
        with django_capture_on_commit_callbacks(execute=True):
            with transaction.atomic():
                event_store.append("Ledger-live", [tick(1), tick(2)])
                event_store.append("Ledger-live", [NewEvent("Unrelated", {})])
                assert live.seen == []  # not committed yet
            assert live.seen == []
        assert live.seen == [1, 2]

    def test_a_rolled_back_append_is_never_told(
        self, event_store: EventStore, registered: Registered, django_capture_on_commit_callbacks
    ) -> None:
        live = LiveRecorder()
        registered.append(live)
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            with rolled_back():
                event_store.append("Ledger-live", [tick(1)])
            event_store.append("Ledger-live", [tick(9)])
        assert live.seen == [9]
        assert len(callbacks) >= 1

    def test_a_failing_live_projection_cannot_fail_a_committed_append(
        self, event_store: EventStore, registered: Registered, django_capture_on_commit_callbacks
    ) -> None:
        live = LiveRecorder()
        registered.append(live)
        with django_capture_on_commit_callbacks(execute=True):
            result = event_store.append("Ledger-live", [tick(1, poison=True)])
        assert event_store.read_stream("Ledger-live") == result.events
        assert live.seen == []


# ------------------------------------------------------------ async nudges
class NudgedLedger(LedgerProjection):
    name = "nudged_ledger"


class FakeTask:
    """Stands in for the `run_projection` task: records what was queued, runs nothing."""

    def __init__(self, *, fail: bool = False) -> None:
        self.queued: list[str] = []
        self.fail = fail

    def delay(self, name: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.queued.append(name)


@pytest.mark.django_db(transaction=True)
class TestAsyncNudges:
    @pytest.fixture(autouse=True)
    def _nudged(self, registered: Registered) -> None:
        registered.append(NudgedLedger())
        reset_ledger("nudged_ledger")
        cache.delete(pending_key("nudged_ledger"))

    def test_with_eager_celery_a_commit_brings_the_projection_up_to_date(self, event_store: EventStore) -> None:
        appended = event_store.append("Ledger-nudge", [tick(2), tick(3)]).events
        appended += event_store.append("Ledger-nudge", [tick(4)]).events
        assert ledger_state("nudged_ledger") == expected_ledger("nudged_ledger", wanted=appended)
        assert cache.get(pending_key("nudged_ledger")) is None  # the run took its pending mark off

    def test_one_run_is_queued_per_pending_run(self, event_store: EventStore, monkeypatch) -> None:
        task = FakeTask()
        monkeypatch.setattr("eventsourcing_app.tasks.run_projection", task)
        with transaction.atomic():
            for amount in range(5):
                event_store.append("Ledger-nudge", [tick(amount)])
            assert task.queued == []  # nothing before the commit
        assert task.queued == ["nudged_ledger"]
        event_store.append("Ledger-nudge", [tick()])
        assert task.queued == ["nudged_ledger"]  # the queued run has not started: it will see this event too
        cache.delete(pending_key("nudged_ledger"))  # what the task does as it starts
        event_store.append("Ledger-nudge", [tick()])
        assert task.queued == ["nudged_ledger", "nudged_ledger"]

    def test_one_commit_asks_the_cache_once_however_many_appends_it_holds(
        self, event_store: EventStore, monkeypatch
    ) -> None:
        task = FakeTask()
        monkeypatch.setattr("eventsourcing_app.tasks.run_projection", task)
        asked: list[str] = []
        add = cache.add
        monkeypatch.setattr(cache, "add", lambda key, *args, **kwargs: asked.append(key) or add(key, *args, **kwargs))
        with rolled_back():
            event_store.append("Ledger-nudge", [tick()])
        with transaction.atomic():
            for amount in range(3):
                with transaction.atomic():  # each in a savepoint, as a saga batch dispatches its commands
                    event_store.append("Ledger-nudge", [tick(amount)])
        assert asked == [pending_key("nudged_ledger")]
        assert task.queued == ["nudged_ledger"]
        cache.delete(pending_key("nudged_ledger"))  # the run started
        event_store.append("Ledger-nudge", [tick()])  # the next commit asks again
        assert task.queued == ["nudged_ledger", "nudged_ledger"]

    def test_appends_nobody_wants_and_rolled_back_appends_queue_nothing(
        self, event_store: EventStore, monkeypatch
    ) -> None:
        task = FakeTask()
        monkeypatch.setattr("eventsourcing_app.tasks.run_projection", task)
        event_store.append("Elsewhere-1", [NewEvent("Unrelated", {})])
        with rolled_back():
            event_store.append("Ledger-nudge", [tick()])
        assert task.queued == []

    def test_a_failed_enqueue_does_not_fail_the_append_and_the_next_one_retries(
        self, event_store: EventStore, monkeypatch
    ) -> None:
        monkeypatch.setattr("eventsourcing_app.tasks.run_projection", FakeTask(fail=True))
        result = event_store.append("Ledger-nudge", [tick()])
        assert event_store.read_stream("Ledger-nudge") == result.events
        assert cache.get(pending_key("nudged_ledger")) is None
        task = FakeTask()
        monkeypatch.setattr("eventsourcing_app.tasks.run_projection", task)
        enqueue_projection("nudged_ledger")
        assert task.queued == ["nudged_ledger"]
