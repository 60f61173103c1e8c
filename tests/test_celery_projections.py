"""Async projections run by real `celery -A project worker` processes on a real broker.

These need CELERY_BROKER_URL (skipped without it; CI runs them on PostgreSQL
with Redis). Writers are separate processes that dispatch shop commands, so
the on-commit nudges travel through the broker as they do in production. The
proof each time: once the workers have caught up, the read models equal a
fold of the whole log computed here from scratch, so nothing was lost and
nothing was applied twice.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection, connections, transaction

from eventsourcing_app.models import Checkpoint
from eventsourcing_app.projections import projection_statuses
from eventsourcing_app.store import EventStore
from eventsourcing_app.tasks import poll_projections, run_projection
from eventsourcing_app.testing import wait_until_caught_up
from project.shop.events import StockAdded
from project.shop.models import InventoryLevel, OrderSummary
from tests.celery_helpers import CeleryWorkers, own_queue, pid_of_owner, print_uncaptured, run_writers, wait_for

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

# Seconds the workers get to apply what the writers appended.
CATCH_UP_TIMEOUT = 30.0
INVENTORY_EVENTS = ["StockAdded", "StockReserved", "StockReleased"]
ORDER_EVENTS = ["OrderPlaced", "OrderConfirmed", "OrderCancelled", "OrderShipped"]
ORDER_STATUS = {"OrderConfirmed": "confirmed", "OrderCancelled": "cancelled", "OrderShipped": "shipped"}


@pytest.fixture
def celery_workers(
    worker_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[CeleryWorkers]:
    """Workers on a queue of this test's own (the test calls `.start(n)`); their logs are printed if it fails.

    `celery_workers.env` is the environment for writer processes too: the test
    database, the broker and the queue, so their nudges reach these workers.
    """
    with own_queue() as queue:
        workers = CeleryWorkers({**worker_env, "CELERY_TASK_DEFAULT_QUEUE": queue}, queue, tmp_path)
        failed_before = request.session.testsfailed
        try:
            yield workers
        finally:
            workers.stop_all()
            if request.session.testsfailed > failed_before:
                print_uncaptured(request, f"\n===== celery worker logs (queue {queue}) =====\n{workers.logs()}")


# ---------------------------------------------------------------- the read models, and a fold of the log
def inventory_read_model() -> dict[str, tuple[int, int]]:
    return {level.sku: (level.available, level.reserved) for level in InventoryLevel.objects.all()}


def inventory_from_log() -> dict[str, tuple[int, int]]:
    """Available and reserved units per SKU, folded from every stock event in the log."""
    levels: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for event in EventStore().iter_all(event_types=INVENTORY_EVENTS):
        level, quantity = levels[event.data.sku], event.data.quantity
        if event.event_type == "StockAdded":
            level[0] += quantity
        elif event.event_type == "StockReserved":
            level[0] -= quantity
            level[1] += quantity
        else:
            level[0] += quantity
            level[1] -= quantity
    return {sku: (available, reserved) for sku, (available, reserved) in levels.items()}


def orders_read_model() -> dict[str, tuple[object, ...]]:
    return {
        str(order.order_id): (order.customer_id, order.status, order.total, order.items, order.placed_at)
        for order in OrderSummary.objects.all()
    }


def orders_from_log() -> dict[str, tuple[object, ...]]:
    """Each order's customer, status, total, lines and placing time, folded from every order event in the log."""
    orders: dict[str, list[object]] = {}
    for event in EventStore().iter_all(event_types=ORDER_EVENTS):
        order_id = str(uuid.UUID(str(event.data.order_id)))
        if event.event_type == "OrderPlaced":
            data = event.data
            items = [{"sku": i.sku, "quantity": i.quantity, "unit_price": str(i.unit_price)} for i in data.items]
            orders[order_id] = [data.customer_id, "placed", Decimal(data.total), items, event.recorded_at]
        else:
            orders[order_id][1] = ORDER_STATUS[event.event_type]
    return {order_id: tuple(order) for order_id, order in orders.items()}


def assert_read_models_match_the_log(*, with_orders: bool = True) -> None:
    inventory = inventory_from_log()
    orders = orders_from_log()
    assert inventory, "the log holds no stock events: the test proves nothing"
    assert orders or not with_orders, "the log holds no orders: the test proves nothing"
    assert inventory_read_model() == inventory
    assert orders_read_model() == orders


def ran_projection_tasks(worker_log: str) -> int:
    return worker_log.count("Task eventsourcing_app.run_projection[")


# ---------------------------------------------------------------- the tests
def test_two_workers_keep_up_with_four_writer_processes(celery_workers: CeleryWorkers) -> None:
    workers = celery_workers.start(2)

    outcomes = [json.loads(line) for line in run_writers(celery_workers.env, 4, "--commands", "40", "--pause", "0.05")]

    assert sum(outcome["dispatched"] for outcome in outcomes) > 100
    wait_until_caught_up(timeout=CATCH_UP_TIMEOUT)
    assert_read_models_match_the_log()
    assert all(ran_projection_tasks(worker.log()) for worker in workers), "each worker got run_projection tasks"


@pytest.mark.postgres
def test_a_worker_killed_mid_batch_leaves_nothing_behind_and_another_takes_over(
    celery_workers: CeleryWorkers,
) -> None:
    """SIGKILL lands inside a batch: its uncommitted writes roll back, and after the lease the other worker redoes it.

    To be sure the kill lands mid-batch, this test holds a row lock on one
    SKU's read-model row: the batch inserts the new SKUs' rows, then waits on
    that lock to update the held one, with its transaction open. That wait is
    seen in pg_stat_activity; the lease names the worker; that worker is killed.
    """
    lease_seconds = 2
    celery_workers.start(2, PROJECTION_LEASE_SECONDS=str(lease_seconds))
    store = EventStore()
    store.append("Inventory-SKU-HELD", [StockAdded(sku="SKU-HELD", quantity=5)])
    wait_until_caught_up(timeout=CATCH_UP_TIMEOUT)
    first_head = store.head_position()

    locker = connections.create_connection("default")
    try:
        locker.set_autocommit(False)
        with locker.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (locker_pid,) = cursor.fetchone()
            cursor.execute("SELECT 1 FROM shop_inventorylevel WHERE sku = %s FOR UPDATE", ["SKU-HELD"])
        with transaction.atomic():  # one commit: the whole backlog is one batch for the worker
            for n in range(40):
                store.append(f"Inventory-SKU-NEW-{n}", [StockAdded(sku=f"SKU-NEW-{n}", quantity=n + 1)])
            store.append("Inventory-SKU-HELD", [StockAdded(sku="SKU-HELD", quantity=7)])

        _backend, blocked_query = wait_for(lambda: _blocked_by(locker_pid), 15, "no batch waited on the held row")
        assert blocked_query.startswith('UPDATE "shop_inventorylevel"'), blocked_query
        checkpoint = Checkpoint.objects.get(name="inventory_levels")
        assert checkpoint.position == first_head < store.head_position()
        victim = celery_workers.by_pid(pid_of_owner(checkpoint.lease_owner))
        assert InventoryLevel.objects.count() == 1, "the batch's inserts are not committed yet"
        victim.kill()
    finally:
        locker.rollback()
        locker.close()

    def beat_poll_until_caught_up() -> bool:
        poll_projections.delay()  # what beat sends every few seconds
        time.sleep(0.3)
        return not any(status.lag for status in projection_statuses())

    wait_for(beat_poll_until_caught_up, CATCH_UP_TIMEOUT, "the surviving worker did not take over")
    assert_read_models_match_the_log(with_orders=False)
    assert inventory_read_model()["SKU-HELD"] == (12, 0)


def _blocked_by(pid: int, *, mid_transaction: bool = True) -> tuple[int, str] | None:
    """(backend pid, query) of a backend waiting on a lock held by backend `pid`.

    `mid_transaction`: only one whose transaction began before the waiting
    statement, i.e. inside a batch rather than a lone autocommit query.
    """
    condition = " AND xact_start < query_start" if mid_transaction else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT pid, query FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)){condition}", [pid]
        )
        return cursor.fetchone()


def _backend_state(pid: int) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row[0] if row else None


@pytest.mark.postgres
def test_an_event_committed_while_the_lease_holder_finishes_is_still_projected(celery_workers: CeleryWorkers) -> None:
    """Worker A has read the head (caught up) but not yet released its lease; event E commits; B is nudged.

    B finds the lease held and leaves E to A, but A decided before E existed.
    To hold A in that gap, the test blocks A's head read behind a lock on the
    position sequence (an uncommitted rename: the head reads the sequence),
    freezes A (SIGSTOP) once the read is answered, appends E, lets B run, and
    thaws A. E must still reach the read model, with no further append or poll.
    """
    celery_workers.start(2)
    store = EventStore()
    store.append("Inventory-SKU-GAP", [StockAdded(sku="SKU-GAP", quantity=1)])
    wait_until_caught_up(timeout=CATCH_UP_TIMEOUT)

    locker = connections.create_connection("default")
    holder = None
    try:
        locker.set_autocommit(False)
        with locker.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (locker_pid,) = cursor.fetchone()
            cursor.execute(
                "ALTER SEQUENCE eventsourcing_event_position_seq RENAME TO eventsourcing_event_position_seq_held"
            )
        run_projection.delay("inventory_levels")
        backend_pid, query = wait_for(
            lambda: _blocked_by(locker_pid, mid_transaction=False), 15, "no worker read the head"
        )
        assert "eventsourcing_event_safe_head" in query, query
        holder = celery_workers.by_pid(pid_of_owner(Checkpoint.objects.get(name="inventory_levels").lease_owner))
        holder.proc.send_signal(signal.SIGSTOP)
        locker.rollback()
        wait_for(lambda: _backend_state(backend_pid) == "idle", 15, "the head read was not answered")

        other = next(worker for worker in celery_workers.workers if worker is not holder)
        done_before = other.log().count("succeeded")
        store.append("Inventory-SKU-GAP", [StockAdded(sku="SKU-GAP", quantity=2)])  # E, and its nudge
        wait_for(lambda: other.log().count("succeeded") > done_before, 15, "the other worker did not run its nudge")
    finally:
        if holder is not None:
            holder.proc.send_signal(signal.SIGCONT)
        locker.rollback()
        locker.close()
    wait_for(lambda: not Checkpoint.objects.get(name="inventory_levels").lease_owner, 15, "the lease was kept")

    wait_until_caught_up(timeout=3)
    assert inventory_read_model()["SKU-GAP"] == (3, 0)


def test_the_beat_poll_catches_up_projections_that_were_never_nudged(celery_workers: CeleryWorkers) -> None:
    workers = celery_workers.start(1)

    outcomes = [json.loads(line) for line in run_writers(celery_workers.env, 2, "--commands", "30", "--no-nudge")]

    assert sum(outcome["dispatched"] for outcome in outcomes) > 0
    statuses = projection_statuses()
    assert all(status.lag for status in statuses), statuses
    assert not ran_projection_tasks(workers[0].log())

    poll_projections.delay()

    wait_until_caught_up(timeout=CATCH_UP_TIMEOUT, sagas=False)  # poll_projections polls projections only
    assert_read_models_match_the_log()


def test_a_worker_keeps_its_database_connection_and_replaces_one_that_was_killed(
    celery_workers: CeleryWorkers,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("terminates the worker's PostgreSQL backend")
    celery_workers.start(1)
    store = EventStore()
    store.append("Inventory-SKU-KILLED", [StockAdded(sku="SKU-KILLED", quantity=2)])
    wait_until_caught_up(timeout=CATCH_UP_TIMEOUT, sagas=False)

    # Between tasks the worker still holds its connection (no new connection per task)...
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        terminated = cursor.fetchall()
    assert terminated, "the worker closed its connection after its task"

    # ...and a dead one does not fail the next task: it is checked and replaced.
    store.append("Inventory-SKU-KILLED", [StockAdded(sku="SKU-KILLED", quantity=3)])
    wait_until_caught_up(timeout=CATCH_UP_TIMEOUT, sagas=False)
    assert_read_models_match_the_log(with_orders=False)
    assert InventoryLevel.objects.get(sku="SKU-KILLED").available == 5


@pytest.mark.postgres
def test_an_event_held_back_by_a_writer_that_rolls_back_is_still_projected(celery_workers: CeleryWorkers) -> None:
    """T1 appends (a position below everything after it) and stays open; T2 appends E and commits; T1 rolls back.

    E's nudge finds the log's head held below E by T1, and T1's rollback nudges nobody: the run
    looks again shortly after, by itself, so E reaches the read model with no further append or poll.
    """
    celery_workers.start(1)
    store = EventStore()
    store.append("Inventory-SKU-HELD", [StockAdded(sku="SKU-HELD", quantity=1)])
    wait_until_caught_up(timeout=CATCH_UP_TIMEOUT)

    slow = connections.create_connection("default")
    try:
        slow.set_autocommit(False)
        with slow.cursor() as cursor:  # an append, in plain SQL: a position taken, then held open
            cursor.execute(
                "INSERT INTO eventsourcing_event (event_id, stream_id, category, version, event_type, schema_version,"
                " data, metadata, tenant_id, recorded_at) VALUES (gen_random_uuid(), 'Slow-1', 'Slow', 1, 'Slow',"
                " 1, '{}', '{}', '', now())"
            )
        store.append("Inventory-SKU-HELD", [StockAdded(sku="SKU-HELD", quantity=2)])  # E, and its nudge
        assert store.head_position() < store.last_position()  # E is held back
        time.sleep(0.5)  # E's run has come and gone, finding the head below E
        slow.rollback()
    finally:
        slow.close()

    wait_for(lambda: inventory_read_model().get("SKU-HELD") == (3, 0), 10, "the held-back event was not projected")
