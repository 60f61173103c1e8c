"""The public test helpers of `eventsourcing_app.testing`: given, captured_events, wait_until_caught_up."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from eventsourcing_app.models import Checkpoint
from eventsourcing_app.projections import Projection, ProjectionRunner, projection_registry
from eventsourcing_app.store import EventStore, NewEvent, RecordedEvent
from eventsourcing_app.testing import NotCaughtUpError, captured_events, given, wait_until_caught_up
from project.shop.events import StockAdded, StockReserved
from project.shop.models import InventoryLevel

pytestmark = pytest.mark.django_db


class BrokenProjection(Projection):
    name = "helpers_broken"
    event_types = ("StockReserved",)

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        raise RuntimeError("read model is down")


@pytest.fixture
def broken() -> Projection:
    projection = BrokenProjection()
    projection_registry.register(projection.name, projection)
    yield projection
    projection_registry.unregister(projection.name)


class TestGiven:
    def test_appends_stream_by_stream_in_order(self, event_store: EventStore) -> None:
        recorded = given(
            {"Inventory-A": [StockAdded(sku="A", quantity=1), StockAdded(sku="A", quantity=2)]},
            {"Inventory-B": [StockAdded(sku="B", quantity=3)], "Inventory-A": [StockAdded(sku="A", quantity=4)]},
        )

        assert [(e.stream_id, e.version, e.data.quantity) for e in recorded] == [
            ("Inventory-A", 1, 1),
            ("Inventory-A", 2, 2),
            ("Inventory-B", 1, 3),
            ("Inventory-A", 3, 4),
        ]
        assert event_store.read_all(after=recorded[0].position - 1) == recorded

    def test_takes_new_events_with_their_ids(self) -> None:
        event = NewEvent.of(StockAdded(sku="A", quantity=1))

        (recorded,) = given({"Inventory-A": [event]})

        assert recorded.event_id == event.event_id


class TestCapturedEvents:
    def test_holds_only_the_events_appended_inside(self, event_store: EventStore) -> None:
        given({"Inventory-A": [StockAdded(sku="A", quantity=1)]})

        with captured_events() as events:
            event_store.append("Inventory-A", [StockAdded(sku="A", quantity=2)])
            event_store.append("Inventory-B", [StockAdded(sku="B", quantity=3)])
            assert events == []  # filled when the block ends

        assert [(e.stream_id, e.data.quantity) for e in events] == [("Inventory-A", 2), ("Inventory-B", 3)]

    def test_empty_when_nothing_was_appended(self) -> None:
        given({"Inventory-A": [StockAdded(sku="A", quantity=1)]})

        with captured_events() as events:
            pass

        assert events == []


class TestWaitUntilCaughtUp:
    def test_with_run_it_applies_the_pending_events_in_process(self) -> None:
        given({"Inventory-A": [StockAdded(sku="A", quantity=2), StockAdded(sku="A", quantity=5)]})

        statuses = wait_until_caught_up(run=True)

        lags = {status.name: status.lag for status in statuses}
        assert lags == {"saga:OrderFulfillment": 0, "inventory_levels": 0, "order_summary": 0}
        assert InventoryLevel.objects.get(sku="A").available == 7
        assert set(Checkpoint.objects.values_list("lease_owner", flat=True)) == {""}  # leases released

    def test_without_run_it_only_watches_and_says_who_lags(self) -> None:
        given({"Inventory-A": [StockAdded(sku="A", quantity=2)]})

        with pytest.raises(AssertionError, match=r"not caught up after 0\.1 s: inventory_levels \(lag 1, running\)"):
            wait_until_caught_up(timeout=0.1)

        assert not InventoryLevel.objects.exists()

    def test_the_error_carries_the_laggards(self) -> None:
        given({"Inventory-A": [StockAdded(sku="A", quantity=2)]})

        with pytest.raises(NotCaughtUpError) as raised:
            wait_until_caught_up(timeout=0)

        assert [(status.name, status.lag) for status in raised.value.statuses] == [("inventory_levels", 1)]

    def test_returns_at_once_when_nothing_is_pending(self) -> None:
        assert {status.lag for status in wait_until_caught_up(timeout=0)} == {0}

    def test_a_failed_projection_fails_at_once(self, broken: Projection) -> None:
        (event,) = given({"Inventory-A": [StockReserved(sku="A", order_id="o-1", quantity=1)]})

        # Had it waited for the timeout instead, the message would be "not caught up".
        with pytest.raises(NotCaughtUpError, match=rf"helpers_broken at position {event.position}: RuntimeError"):
            wait_until_caught_up(timeout=60, run=True)

    def test_waits_for_a_worker_elsewhere(self, transactional_db: None, settings) -> None:
        """Without `run`, a worker in another thread catches up and the wait sees it."""
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "COMMIT_HOOKS": []}
        given({"Inventory-A": [StockAdded(sku="A", quantity=3)]})

        def work() -> None:
            try:
                time.sleep(0.2)
                ProjectionRunner(projection_registry.lookup("inventory_levels")).run()
            finally:
                connection.close()

        worker = threading.Thread(target=work)
        worker.start()
        try:
            wait_until_caught_up(timeout=30)
        finally:
            worker.join()

        assert InventoryLevel.objects.get(sku="A").available == 3
