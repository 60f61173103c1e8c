"""The shop's OrderFulfillment saga run by real `celery -A project worker` processes on a real broker.

These need CELERY_BROKER_URL (skipped without it; CI runs them on PostgreSQL
with Redis). Orders are placed from the test process, over HTTP or through
`dispatch`, so their on-commit nudges travel through the broker to the
workers, as in production. Each order is one of four kinds: plain (stock for
it is plentiful and its total under SHOP_PAYMENT_LIMIT: it must be
confirmed), dear (over the limit: reserved, declined, released, cancelled),
scarce (it also wants units of a SKU with stock for only a few orders: the
first few are confirmed, the others cancelled without reserving anything) and
mixed scarce (a plentiful line first, then the scarce one: "all or none" must
leave no reservation of the plentiful line behind).

The proof each time is read from the event log, not from the workers: per
order at most one StockReserved per SKU, one payment decision, one outcome,
never both confirmed and cancelled; every reservation of a cancelled order
released; stock never below zero at any point of the log; and the read
models and the saga states agree with the log.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache as django_cache
from django.db import connection, connections

from eventsourcing_app.commands import dispatch
from eventsourcing_app.models import FINAL_SAGA_STATUSES, Checkpoint, SagaState, SagaStatus
from eventsourcing_app.sagas import checkpoint_name, saga_registry
from eventsourcing_app.sagas.hooks import pending_key as saga_pending_key
from eventsourcing_app.store import EventStore
from eventsourcing_app.tasks import poll_projections, poll_sagas
from eventsourcing_app.testing import wait_until_caught_up
from project.shop.commands import AddStock, PlaceOrder
from project.shop.models import InventoryLevel, OrderSummary
from project.shop.sagas import OrderFulfillment
from tests.celery_helpers import CeleryWorkers, own_queue, pid_of_owner, print_uncaptured, wait_for

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

SAGA = OrderFulfillment.name
PLENTIFUL = [f"SKU-SAGA-{n}" for n in range(4)]
PLENTY = 100_000
SCARCE = "SKU-SAGA-SCARCE"
SCARCE_STOCK, SCARCE_QUANTITY = 7, 2  # stock for 3 scarce orders, and 1 unit no order can take
HELD = "SKU-SAGA-HELD"  # wanted by one order only: the kill test holds its stream's row
STOCK = {**dict.fromkeys(PLENTIFUL, PLENTY), HELD: PLENTY, SCARCE: SCARCE_STOCK}
FINAL_ORDER_STATUSES = ("confirmed", "cancelled")
ORDER_OUTCOMES = ("OrderConfirmed", "OrderCancelled")
PAYMENT_DECISIONS = ("PaymentAuthorised", "PaymentDeclined")
INVENTORY_EVENTS = ("StockAdded", "StockReserved", "StockReleased")


@pytest.fixture
def celery_workers(
    worker_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[CeleryWorkers]:
    """Workers on a queue of this test's own (the test calls `.start(n)`); their logs are printed if it fails.

    Besides the projections' marks that `own_queue` forgets, the sagas' "a run is queued"
    marks are forgotten too: one left in the shared cache by an earlier run would swallow
    this run's nudges for a minute.
    """
    with own_queue() as queue:
        _forget_saga_nudges()
        workers = CeleryWorkers({**worker_env, "CELERY_TASK_DEFAULT_QUEUE": queue}, queue, tmp_path)
        failed_before = request.session.testsfailed
        try:
            yield workers
        finally:
            workers.stop_all()
            _forget_saga_nudges()
            if request.session.testsfailed > failed_before:
                print_uncaptured(request, f"\n===== celery worker logs (queue {queue}) =====\n{workers.logs()}")


def _forget_saga_nudges() -> None:
    for name in saga_registry.names():
        django_cache.delete(saga_pending_key(name))


# ---------------------------------------------------------------- the orders
@dataclass(frozen=True)
class PlannedOrder:
    kind: str  # plain, dear, scarce or mixed
    items: list[dict[str, object]]

    @property
    def total(self) -> Decimal:
        return sum((Decimal(str(i["unit_price"])) * int(i["quantity"]) for i in self.items), Decimal("0"))


def plan_orders(count: int, seed: int = 7) -> list[PlannedOrder]:
    """`count` orders: one in ten dear, one in ten scarce, one in ten mixed scarce, the rest plain."""
    rng = random.Random(seed)
    limit = Decimal(settings.SHOP_PAYMENT_LIMIT)
    orders = []
    for n in range(count):
        kind = {3: "scarce", 5: "mixed", 7: "dear"}.get(n % 10, "plain")
        lines = [
            {"sku": sku, "quantity": rng.randint(1, 3), "unit_price": f"{rng.randint(100, 2500) / 100:.2f}"}
            for sku in rng.sample(PLENTIFUL, rng.randint(1, 3))
        ]
        if kind == "dear":
            lines[0]["unit_price"] = f"{limit + 1:.2f}"
        elif kind == "scarce":
            lines = [{"sku": SCARCE, "quantity": SCARCE_QUANTITY, "unit_price": "5.00"}]
        elif kind == "mixed":
            lines.append({"sku": SCARCE, "quantity": SCARCE_QUANTITY, "unit_price": "5.00"})
        orders.append(PlannedOrder(kind, lines))
    return orders


def add_stock() -> None:
    for sku, quantity in STOCK.items():
        dispatch(AddStock(sku=sku, quantity=quantity))


def place(order: PlannedOrder) -> str:
    return str(dispatch(PlaceOrder(customer_id=f"saga-{order.kind}", items=order.items)).aggregate_id)


# ---------------------------------------------------------------- waiting, and standing in for beat
def orders_final(order_ids: set[str]) -> bool:
    final = OrderSummary.objects.filter(order_id__in=order_ids, status__in=FINAL_ORDER_STATUSES).count()
    return final == len(order_ids)


def final_sagas() -> int:
    return SagaState.objects.filter(saga_type=SAGA, status__in=FINAL_SAGA_STATUSES).count()


def beat_poll_until_final(order_ids: set[str], timeout: float) -> None:
    """Stand in for Celery beat (not started here): queue poll_sagas and poll_projections every half second.

    A worker killed while holding the saga's lease leaves nobody to look after the
    saga once the lease runs out (the survivors' nudged runs found it taken and
    left the work to its holder); in production the beat poll picks it up.
    """

    def polled_and_final() -> bool:
        poll_sagas.delay()
        poll_projections.delay()
        time.sleep(0.5)
        return orders_final(order_ids)

    wait_for(polled_and_final, timeout, "not every order reached a final status", interval=0)


# ---------------------------------------------------------------- the log, and what must hold of it
@dataclass
class OrderHistory:
    """What the log says of one order: its events by type, and its units reserved and released per SKU."""

    types: Counter = field(default_factory=Counter)
    reserved: Counter = field(default_factory=Counter)
    released: Counter = field(default_factory=Counter)
    reservations: Counter = field(default_factory=Counter)  # StockReserved events per SKU


def histories(order_ids: set[str]) -> dict[str, OrderHistory]:
    found: dict[str, OrderHistory] = defaultdict(OrderHistory)
    for event in EventStore().iter_all():
        order_id = getattr(event.data, "order_id", None)
        if order_id is None or str(order_id) not in order_ids:
            continue
        history = found[str(order_id)]
        history.types[event.event_type] += 1
        if event.event_type == "StockReserved":
            history.reserved[event.data.sku] += event.data.quantity
            history.reservations[event.data.sku] += 1
        elif event.event_type == "StockReleased":
            history.released[event.data.sku] += event.data.quantity
    return found


def inventory_from_log() -> dict[str, tuple[int, int]]:
    """(available, reserved) per SKU replayed event by event; fails if stock was ever below zero."""
    levels: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for event in EventStore().iter_all(event_types=list(INVENTORY_EVENTS)):
        level, quantity = levels[event.data.sku], event.data.quantity
        sign = {"StockAdded": (1, 0), "StockReserved": (-1, 1), "StockReleased": (1, -1)}[event.event_type]
        level[0] += sign[0] * quantity
        level[1] += sign[1] * quantity
        assert level[0] >= 0, f"{event.data.sku}: {level[0]} available after position {event.position}"
        assert level[1] >= 0, f"{event.data.sku}: {level[1]} reserved after position {event.position}"
    return {sku: (available, reserved) for sku, (available, reserved) in levels.items()}


def assert_every_saga_ran_once(placed: dict[str, PlannedOrder]) -> Counter:
    """Everything that must hold once every order is final; returns the statuses of the orders by kind."""
    order_ids = set(placed)
    log = histories(order_ids)
    summary = {str(o.order_id): o.status for o in OrderSummary.objects.filter(order_id__in=order_ids)}
    outcomes: Counter = Counter()
    for order_id, order in placed.items():
        history, status = log[order_id], summary[order_id]
        outcomes[order.kind, status] += 1
        assert history.types["OrderPlaced"] == 1, (order_id, history)
        assert sum(history.types[t] for t in ORDER_OUTCOMES) == 1, ("one outcome", order_id, history)
        assert sum(history.types[t] for t in PAYMENT_DECISIONS) <= 1, ("one payment decision", order_id, history)
        assert max(history.reservations.values(), default=0) <= 1, ("one reservation per SKU", order_id, history)
        assert history.types["StockReleased"] <= len(history.reservations), ("released once", order_id, history)
        wanted = Counter()
        for line in order.items:
            wanted[line["sku"]] += line["quantity"]
        if status == "confirmed":
            assert history.types["OrderConfirmed"] == 1
            assert history.types["PaymentAuthorised"] == 1
            assert history.reserved == wanted, (order_id, history)
            assert not history.released, (order_id, history)
        else:
            assert history.types["OrderCancelled"] == 1
            assert history.released == history.reserved, ("a cancelled order keeps no stock", order_id, history)
            assert history.reserved in (Counter(), wanted), ("all or none", order_id, history)
    assert_summary_matches_log(log, summary)

    # Each kind ends as it must; the scarce SKU's stock went to exactly as many orders as it covers.
    assert outcomes["plain", "cancelled"] == 0, outcomes
    assert outcomes["dear", "confirmed"] == 0, outcomes
    scarce_orders = sum(1 for order in placed.values() if order.kind in ("scarce", "mixed"))
    scarce_confirmed = outcomes["scarce", "confirmed"] + outcomes["mixed", "confirmed"]
    assert scarce_confirmed == min(scarce_orders, SCARCE_STOCK // SCARCE_QUANTITY), outcomes

    # The read model of stock is the log's, and the log's stock never went below zero.
    inventory = inventory_from_log()
    assert {level.sku: (level.available, level.reserved) for level in InventoryLevel.objects.all()} == inventory
    confirmed_units: Counter = Counter()
    for order_id, order in placed.items():
        if summary[order_id] == "confirmed":
            for line in order.items:
                confirmed_units[line["sku"]] += line["quantity"]
    for sku, added in STOCK.items():
        assert inventory[sku] == (added - confirmed_units[sku], confirmed_units[sku]), sku

    # Each saga is final, agrees with its order, and handled each event once (its history is its transactions').
    states = {s.correlation_id: s for s in SagaState.objects.filter(saga_type=SAGA, correlation_id__in=order_ids)}
    assert set(states) == order_ids
    for order_id, state in states.items():
        expected = SagaStatus.COMPLETED if summary[order_id] == "confirmed" else SagaStatus.COMPENSATED
        assert state.status == expected, (order_id, state.status, state.last_error)
        handled = [entry["event_id"] for entry in state.history if entry["kind"] == "event"]
        assert len(handled) == len(set(handled)), ("an event handled twice", order_id, state.history)
        issued = [
            (entry["kind"], entry["step"]) for entry in state.history if entry["kind"] in ("command", "compensated")
        ]
        assert len(issued) == len(set(issued)), ("a step issued twice", order_id, state.history)
    return outcomes


def assert_summary_matches_log(log: dict[str, OrderHistory], summary: dict[str, str]) -> None:
    from_log = {
        order_id: "confirmed" if history.types["OrderConfirmed"] else "cancelled" for order_id, history in log.items()
    }
    assert summary == from_log


# ---------------------------------------------------------------- the tests
def test_two_workers_take_every_order_placed_over_http_to_its_outcome(
    celery_workers: CeleryWorkers, api_client
) -> None:
    """On-commit nudges alone (no beat, no polling) carry each saga from OrderPlaced to its outcome."""
    workers = celery_workers.start(2)
    add_stock()
    planned = plan_orders(60)

    placed = {}
    for order in planned:
        body = {"customer_id": f"saga-{order.kind}", "items": order.items}
        response = api_client.post("/api/commands/PlaceOrder/", body, format="json")
        assert response.status_code in (200, 201), response.content
        placed[response.json()["aggregate_id"]] = order

    wait_for(lambda: orders_final(set(placed)), 30, "not every order reached a final status")
    wait_until_caught_up(timeout=10)
    outcomes = assert_every_saga_ran_once(placed)
    assert outcomes["plain", "confirmed"] == sum(1 for order in planned if order.kind == "plain")
    assert outcomes["dear", "cancelled"] == sum(1 for order in planned if order.kind == "dear")
    assert all("eventsourcing_app.run_saga[" in worker.log() for worker in workers), "both workers got run_saga tasks"


@pytest.mark.postgres
def test_a_worker_killed_mid_saga_batch_applies_no_command_twice(celery_workers: CeleryWorkers) -> None:
    """SIGKILL lands inside a saga batch that has dispatched commands; a replacement worker finishes every saga.

    To be sure the kill lands mid-batch, the test holds a row lock on the
    stream of a SKU that only the order placed halfway through wants, on its
    last line: the batch that reserves that order's stock has dispatched
    commands for other orders and appended that order's first line in its
    transaction (it holds the log's append lock), then waits on the row. The
    wait is seen in pg_stat_activity, the saga's lease names the worker, and
    that worker is killed. Its batch rolls back: what it had dispatched left
    nothing, and is dispatched again by whoever runs the saga next, once the
    lease (2 s here) has run out.
    """
    run_sagas_to_the_end_through_a_kill(celery_workers, count=200, timeout=45)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_killed_mid_saga_batch_applies_no_command_twice_long(celery_workers: CeleryWorkers) -> None:
    run_sagas_to_the_end_through_a_kill(celery_workers, count=2000, timeout=300)


def run_sagas_to_the_end_through_a_kill(celery_workers: CeleryWorkers, *, count: int, timeout: float) -> None:
    lease_seconds = str(2)
    celery_workers.start(2, PROJECTION_LEASE_SECONDS=lease_seconds)
    add_stock()
    planned = plan_orders(count)
    held = count // 2  # a plain order (n % 10 == 0), with one unit of the held SKU last
    planned[held] = PlannedOrder("plain", [*planned[held].items, {"sku": HELD, "quantity": 1, "unit_price": "1.00"}])
    placer = Placer(planned, held=held, timeout=timeout)

    locker = connections.create_connection("default")
    try:
        locker.set_autocommit(False)
        with locker.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (locker_pid,) = cursor.fetchone()
            cursor.execute("SELECT 1 FROM eventsourcing_stream WHERE stream_id = %s FOR UPDATE", [f"Inventory-{HELD}"])
        placer.start()
        kill_the_batch_waiting_on(locker_pid, celery_workers, count=count, timeout=timeout)
    finally:
        locker.rollback()
        locker.close()
    celery_workers.start(1, PROJECTION_LEASE_SECONDS=lease_seconds)
    placed = placer.result(timeout)
    assert len(placed) == count

    beat_poll_until_final(set(placed), timeout)
    wait_until_caught_up(timeout=10)
    assert_every_saga_ran_once(placed)


class Placer(threading.Thread):
    """Places the orders one by one with `dispatch`, from a thread: it may wait on the log's append lock.

    Order `held` is placed only once some saga is final, so that when the batch
    reserving its stock is killed, some sagas are final and others are not.
    """

    def __init__(self, planned: list[PlannedOrder], *, held: int, timeout: float) -> None:
        super().__init__(name="placer", daemon=True)
        self.planned = planned
        self.held = held
        self.timeout = timeout
        self.placed: dict[str, PlannedOrder] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n, order in enumerate(self.planned):
                if n == self.held:
                    wait_for(final_sagas, self.timeout, "no saga became final")
                self.placed[place(order)] = order
        except BaseException as error:  # reported by result()
            self.error = error
        finally:
            connection.close()

    def result(self, timeout: float) -> dict[str, PlannedOrder]:
        self.join(timeout)
        assert not self.is_alive(), f"the placer placed {len(self.placed)} orders in {timeout} s"
        if self.error is not None:
            raise self.error
        return self.placed


def kill_the_batch_waiting_on(locker_pid: int, celery_workers: CeleryWorkers, *, count: int, timeout: float) -> None:
    """SIGKILL the worker whose saga batch waits on the locker's row, once it does, mid-transaction."""
    backend, query = wait_for(lambda: _blocked_by(locker_pid), timeout, "no saga batch waited on the held row")
    assert "eventsourcing_stream" in query, query
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND granted", [backend])
        assert cursor.fetchone(), "the batch has appended events in its transaction (it holds the append lock)"
    assert 0 < final_sagas() < count, "some sagas are final, others are not"
    lease_owner = Checkpoint.objects.get(name=checkpoint_name(SAGA)).lease_owner
    celery_workers.by_pid(pid_of_owner(lease_owner)).kill()


def _blocked_by(pid: int) -> tuple[int, str] | None:
    """(backend pid, query) of a backend waiting, inside a longer transaction, on a lock held by backend `pid`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, query FROM pg_stat_activity"
            " WHERE %s = ANY(pg_blocking_pids(pid)) AND xact_start < query_start",
            [pid],
        )
        return cursor.fetchone()
