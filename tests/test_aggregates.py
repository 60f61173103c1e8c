"""Aggregates, the repository and snapshots, through the shop's Order and Inventory."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest

from eventsourcing_app.aggregates import Aggregate, Repository, applies
from eventsourcing_app.exceptions import AggregateError, CommandRejectedError, ConcurrencyError, StreamNotFoundError
from eventsourcing_app.models import Snapshot
from eventsourcing_app.store import DomainEvent, EventStore
from project.shop.aggregates import Inventory, Order
from project.shop.events import OrderLine, OrderPlaced, StockAdded, StockReserved
from tests.factories import OrderLineFactory

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Counted(DomainEvent, event_type="tests.aggregates.Counted"):
    by: int


class Counter(Aggregate):
    """A tiny aggregate with snapshots every 1,000 events."""

    snapshot_every = 1000
    total: int = 0
    history: list[int]

    def __init__(self, aggregate_id: object) -> None:
        super().__init__(aggregate_id)
        self.history = []

    def count(self, by: int) -> None:
        self.raise_event(Counted(by))

    @applies(Counted)
    def _counted(self, event: Counted) -> None:
        self.total += event.by
        self.history = [*self.history[-4:], event.by]


def place_order(order_id: uuid.UUID | None = None) -> Order:
    return Order.place(order_id or uuid.uuid4(), "customer-1", [OrderLineFactory(quantity=2, unit_price=Decimal("5"))])


class TestAggregateBase:
    def test_raising_an_event_changes_state_and_version(self) -> None:
        order = place_order()
        assert (order.status, order.total, order.version, order.loaded_version) == ("placed", Decimal("10"), 1, 0)
        assert [type(e) for e in order.pending_events] == [OrderPlaced]

    def test_stream_id_is_category_and_id(self) -> None:
        order_id = uuid.uuid4()
        assert place_order(order_id).stream_id == f"Order-{order_id}"
        assert Inventory("SKU-1").stream_id == "Inventory-SKU-1"

    def test_an_event_without_a_handler_is_an_error(self) -> None:
        with pytest.raises(AggregateError, match="no @applies method"):
            Order("x").apply(StockAdded(sku="x", quantity=1))

    def test_category_must_not_contain_a_dash(self) -> None:
        with pytest.raises(AggregateError):
            type("Bad", (Aggregate,), {"category": "my-thing"})

    def test_domain_rules_refuse_without_raising_events(self) -> None:
        order = place_order()
        with pytest.raises(CommandRejectedError):
            order.ship()
        inventory = Inventory("SKU-1")
        with pytest.raises(CommandRejectedError, match="available"):
            inventory.reserve("order-1", 1)
        assert inventory.pending_events == []


class TestRepository:
    def test_save_then_load_rebuilds_state_by_replay(self) -> None:
        repo = Repository(Order)
        order = place_order()
        result = repo.save(order)
        assert result is not None
        assert result.version == 1
        assert order.pending_events == []
        loaded = repo.load(order.id)
        loaded.confirm()
        repo.save(loaded)
        again = repo.load(order.id)
        assert (again.status, again.version, again.total) == ("confirmed", 2, Decimal("10"))
        assert again.items == order.items

    def test_loading_a_missing_aggregate_raises(self) -> None:
        with pytest.raises(StreamNotFoundError):
            Repository(Order).load(uuid.uuid4())
        assert not Repository(Order).exists(uuid.uuid4())

    def test_saving_nothing_appends_nothing(self) -> None:
        repo = Repository(Order)
        order = place_order()
        repo.save(order)
        assert repo.save(repo.load(order.id)) is None

    def test_save_uses_the_loaded_version_as_expected_version(self) -> None:
        repo = Repository(Inventory)
        inventory = Inventory("SKU-RACE")
        inventory.add_stock(1)
        repo.save(inventory)
        first, second = repo.load("SKU-RACE"), repo.load("SKU-RACE")
        first.reserve("order-1", 1)
        repo.save(first)
        second.reserve("order-2", 1)  # allowed by its stale state...
        with pytest.raises(ConcurrencyError) as excinfo:
            repo.save(second)  # ...but the stream moved on
        assert (excinfo.value.expected, excinfo.value.actual) == (1, 2)
        assert repo.load("SKU-RACE").available == 0

    def test_two_new_aggregates_with_one_id_cannot_both_be_saved(self) -> None:
        repo = Repository(Order)
        order_id = uuid.uuid4()
        repo.save(place_order(order_id))
        with pytest.raises(ConcurrencyError):
            repo.save(place_order(order_id))

    def test_metadata_is_passed_to_the_events(self) -> None:
        repo = Repository(Order)
        order = place_order()
        repo.save(order, metadata={"correlation_id": "corr-1", "user_id": "7"})
        (event,) = EventStore().read_stream(order.stream_id)
        assert event.metadata == {"correlation_id": "corr-1", "user_id": "7"}


class TestSnapshots:
    def test_loading_10000_events_reads_the_snapshot_and_the_tail_only(self, django_assert_num_queries) -> None:
        repo = Repository(Counter)
        counter = Counter("big")
        for batch in range(10):
            for i in range(1000):
                counter.count(batch * 1000 + i)
            repo.save(counter)
        for i in range(37):
            counter.count(i)
        repo.save(counter)
        assert Snapshot.objects.get(stream_id="Counter-big").version == 10000

        with django_assert_num_queries(1):  # the snapshot and the 37 events after it, in one query
            loaded = repo.load("big")
        assert (loaded.version, loaded.total, loaded.history) == (10037, counter.total, counter.history)

    def test_snapshot_equals_a_full_replay(self, settings) -> None:
        settings.EVENTSOURCING = {"SNAPSHOT_EVERY": {"Inventory": 3}}
        repo = Repository(Inventory)
        inventory = Inventory("SKU-SNAP")
        inventory.add_stock(10)
        repo.save(inventory)
        for n in range(4):
            loaded = repo.load("SKU-SNAP")
            loaded.reserve(f"order-{n}", 2)
            repo.save(loaded)
        assert Snapshot.objects.get(stream_id="Inventory-SKU-SNAP").version == 3
        from_snapshot = repo.load("SKU-SNAP")
        settings.EVENTSOURCING = {}
        replayed = repo.load("SKU-SNAP")
        assert from_snapshot.snapshot_state() == replayed.snapshot_state()
        assert (from_snapshot.available, from_snapshot.reservations) == (2, {f"order-{n}": 2 for n in range(4)})

    def test_snapshot_state_round_trips_typed_fields(self, settings) -> None:
        settings.EVENTSOURCING = {"SNAPSHOT_EVERY": {"Order": 1}}
        repo = Repository(Order)
        order = Order.place(uuid.uuid4(), "c", [OrderLine("SKU-1", 3, Decimal("1.10"))])
        repo.save(order)
        loaded = repo.load(order.id)
        assert loaded.items == [OrderLine("SKU-1", 3, Decimal("1.10"))]
        assert str(loaded.total) == "3.30"

    def test_without_a_policy_no_snapshot_is_written_or_read(self, django_assert_num_queries) -> None:
        repo = Repository(Inventory)
        inventory = Inventory("SKU-NOSNAP")
        for _ in range(5):
            inventory.add_stock(1)
        repo.save(inventory)
        assert not Snapshot.objects.filter(stream_id="Inventory-SKU-NOSNAP").exists()
        with django_assert_num_queries(1):
            assert repo.load("SKU-NOSNAP").available == 5

    def test_a_snapshot_that_no_longer_fits_is_ignored(self, settings) -> None:
        settings.EVENTSOURCING = {"SNAPSHOT_EVERY": {"Inventory": 1}}
        repo = Repository(Inventory)
        inventory = Inventory("SKU-OLD")
        inventory.add_stock(4)
        repo.save(inventory)
        snapshot = Snapshot.objects.get(stream_id="Inventory-SKU-OLD")
        Snapshot.objects.filter(pk=snapshot.pk).update(state={"available": "not a number"})
        assert repo.load("SKU-OLD").available == 4
        Snapshot.objects.filter(pk=snapshot.pk).update(aggregate_type="some.other.Class", state={"available": 99})
        assert repo.load("SKU-OLD").available == 4

    def test_stock_reserved_events_replay_into_reservations(self) -> None:
        EventStore().append(
            "Inventory-SKU-R",
            [StockAdded(sku="SKU-R", quantity=5), StockReserved(sku="SKU-R", order_id="o1", quantity=3)],
        )
        inventory = Repository(Inventory).load("SKU-R")
        assert (inventory.available, inventory.reserved) == (2, 3)
