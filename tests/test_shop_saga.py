"""The shop's OrderFulfillment saga, end to end over HTTP in the embedded mode (tasks run on commit).

Every test here commits for real (transactional_db): the on-commit nudges run
the saga and the projections in-process, as `runserver` does with no broker.
"""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from eventsourcing_app.commands import CommandContext, dispatch
from eventsourcing_app.exceptions import ConcurrencyError
from eventsourcing_app.models import SagaState, SagaStatus
from eventsourcing_app.projections import ProjectionRunner
from eventsourcing_app.sagas import saga_registry
from eventsourcing_app.sagas.manager import idempotency_key
from eventsourcing_app.store import EventStore
from eventsourcing_app.testing import wait_until_caught_up
from project.shop.aggregates import Inventory
from project.shop.commands import ReserveStock

pytestmark = pytest.mark.django_db(transaction=True)


def command(client, command_type: str, body: dict) -> dict:
    response = client.post(f"/api/commands/{command_type}/", body, format="json")
    assert response.status_code in (200, 201), response.content
    return response.json()


def place(client, sku: str, quantity: int, unit_price: str = "10.00") -> str:
    body = {"customer_id": "ada", "items": [{"sku": sku, "quantity": quantity, "unit_price": unit_price}]}
    return command(client, "PlaceOrder", body)["aggregate_id"]


def order_status(client, order_id: str) -> str:
    response = client.get(f"/api/orders/{order_id}/")
    assert response.status_code == 200, response.content
    return response.json()["status"]


def inventory(client, sku: str) -> tuple[int, int]:
    body = client.get(f"/api/inventory/{sku}/").json()
    return body["available"], body["reserved"]


def run_saga() -> None:
    """The shop's saga, in this thread, up to the head (for tests whose appends nudge no saga)."""
    ProjectionRunner(saga_registry.manager("OrderFulfillment")).run()


def event_types(stream_id: str) -> list[str]:
    return [e.event_type for e in EventStore().read_stream(stream_id)]


def test_an_order_with_stock_and_an_acceptable_total_is_confirmed(api_client) -> None:
    command(api_client, "AddStock", {"sku": "SKU-OK", "quantity": 5})
    order_id = place(api_client, "SKU-OK", 2)
    wait_until_caught_up()
    assert order_status(api_client, order_id) == "confirmed"
    assert inventory(api_client, "SKU-OK") == (3, 2)
    saga = SagaState.objects.get(saga_type="OrderFulfillment", correlation_id=order_id)
    assert (saga.status, saga.current_step, saga.deadline) == (SagaStatus.COMPLETED, "confirm_order", None)
    assert event_types(f"Order-{order_id}") == ["OrderPlaced", "OrderConfirmed"]
    assert event_types(f"Payment-{order_id}") == ["PaymentAuthorised"]


def test_an_order_short_of_stock_is_cancelled_and_reserves_nothing(api_client) -> None:
    command(api_client, "AddStock", {"sku": "SKU-FEW", "quantity": 1})
    order_id = place(api_client, "SKU-FEW", 2)
    wait_until_caught_up()
    assert order_status(api_client, order_id) == "cancelled"
    assert inventory(api_client, "SKU-FEW") == (1, 0)
    assert event_types("Inventory-SKU-FEW") == ["StockAdded"]
    assert event_types(f"Order-{order_id}") == ["OrderPlaced", "OrderCancelled"]
    assert EventStore().read_stream(f"Order-{order_id}")[-1].data.reason == "out of stock"
    saga = SagaState.objects.get(correlation_id=order_id)
    assert saga.status == SagaStatus.COMPENSATED
    assert "reserve_stock" in saga.last_error


def test_a_declined_payment_releases_the_stock_and_cancels_the_order(api_client, settings) -> None:
    settings.SHOP_PAYMENT_LIMIT = "100.00"
    command(api_client, "AddStock", {"sku": "SKU-DEAR", "quantity": 5})
    order_id = place(api_client, "SKU-DEAR", 2, unit_price="60.00")
    wait_until_caught_up()
    assert order_status(api_client, order_id) == "cancelled"
    assert inventory(api_client, "SKU-DEAR") == (5, 0)
    assert event_types("Inventory-SKU-DEAR") == ["StockAdded", "StockReserved", "StockReleased"]
    assert event_types(f"Payment-{order_id}") == ["PaymentDeclined"]
    cancelled = EventStore().read_stream(f"Order-{order_id}")[-1]
    assert cancelled.event_type == "OrderCancelled"
    assert cancelled.data.reason.startswith("payment declined")
    saga = SagaState.objects.get(correlation_id=order_id)
    assert saga.status == SagaStatus.COMPENSATED
    compensated = [entry["command_type"] for entry in saga.history if entry["kind"] == "compensated"]
    assert compensated == ["ReleaseStock", "CancelOrder"]  # newest step first


def test_saga_commands_carry_the_orders_correlation_id_and_their_cause(api_client) -> None:
    command(api_client, "AddStock", {"sku": "SKU-TRACE", "quantity": 1})
    response = api_client.post(
        "/api/commands/PlaceOrder/",
        {"customer_id": "ada", "items": [{"sku": "SKU-TRACE", "quantity": 1, "unit_price": "1.00"}]},
        format="json",
        HTTP_X_CORRELATION_ID="trace-42",
    )
    order_id = response.json()["aggregate_id"]
    store = EventStore()
    placed, confirmed = store.read_stream(f"Order-{order_id}")
    reserved = store.read_stream("Inventory-SKU-TRACE")[-1]
    (authorised,) = store.read_stream(f"Payment-{order_id}")
    assert {e.metadata["correlation_id"] for e in (placed, reserved, authorised, confirmed)} == {"trace-42"}
    assert reserved.metadata["causation_id"] == str(placed.event_id)
    assert authorised.metadata["causation_id"] == str(reserved.event_id)
    assert confirmed.metadata["causation_id"] == str(authorised.event_id)
    assert confirmed.metadata["custom"] == {"saga": "OrderFulfillment", "saga_id": order_id}


def test_a_customer_cancelling_mid_saga_gets_the_stock_back(api_client, without_sagas) -> None:
    """The order is cancelled before the saga hears of it: ReserveStock is refused, nothing stays reserved."""
    command(api_client, "AddStock", {"sku": "SKU-MID", "quantity": 3})
    order_id = place(api_client, "SKU-MID", 2)
    command(api_client, "CancelOrder", {"order_id": order_id, "reason": "changed my mind"})
    run_saga()
    wait_until_caught_up()
    assert order_status(api_client, order_id) == "cancelled"
    assert inventory(api_client, "SKU-MID") == (3, 0)
    assert event_types(f"Order-{order_id}") == ["OrderPlaced", "OrderCancelled"]  # cancelled once, not twice
    assert SagaState.objects.get(correlation_id=order_id).status in (SagaStatus.COMPENSATED, SagaStatus.FAILED)


def test_a_batch_whose_commands_all_go_through_takes_no_savepoint_per_command(api_client, without_sagas) -> None:
    command(api_client, "AddStock", {"sku": "SKU-FAST", "quantity": 5})
    orders = [place(api_client, "SKU-FAST", 1) for _ in range(5)]

    with CaptureQueriesContext(connection) as queries:
        run_saga()
    savepoints = _command_savepoints(queries)  # now: each request (below) empties the connection's query log
    claims = [
        query["sql"] for query in queries.captured_queries if "INTO eventsourcing_idempotency_record" in query["sql"]
    ]

    wait_until_caught_up()
    assert [order_status(api_client, order_id) for order_id in orders] == ["confirmed"] * 5
    assert savepoints == 0  # 15 commands in three batches (reserve, authorise, confirm)
    assert [sql.partition(":")[0] for sql in claims] == ["5 times"] * 3  # each batch claims its 5 keys at once


def test_a_batch_with_a_refused_command_is_redone_and_every_order_decided_once(api_client, without_sagas) -> None:
    """Two orders reserve the two units and the third is refused, in one batch: its fast pass (no
    savepoint per command) is rolled back and the batch redone with one per command."""
    command(api_client, "AddStock", {"sku": "SKU-TWO", "quantity": 2})
    orders = [place(api_client, "SKU-TWO", 1) for _ in range(3)]

    with CaptureQueriesContext(connection) as queries:
        run_saga()
    savepoints = _command_savepoints(queries)

    wait_until_caught_up()
    assert [order_status(api_client, order_id) for order_id in orders] == ["confirmed", "confirmed", "cancelled"]
    assert inventory(api_client, "SKU-TWO") == (0, 2)
    assert event_types("Inventory-SKU-TWO") == ["StockAdded", "StockReserved", "StockReserved"]
    for order_id in orders[:2]:
        assert event_types(f"Order-{order_id}") == ["OrderPlaced", "OrderConfirmed"]
        assert event_types(f"Payment-{order_id}") == ["PaymentAuthorised"]
    assert event_types(f"Order-{orders[2]}") == ["OrderPlaced", "OrderCancelled"]
    assert SagaState.objects.get(correlation_id=orders[2]).status == SagaStatus.COMPENSATED
    assert savepoints == 4  # the redone batch's: 3 ReserveStock, 1 CancelOrder; none in the next two


def test_a_race_lost_in_a_batch_s_first_pass_is_retried_in_the_redone_batch(
    api_client, without_sagas, monkeypatch
) -> None:
    """A command of the first pass loses a race: with no savepoint of its own it is not retried there
    (its transaction must roll back); the batch is redone, and the command retried, with savepoints."""
    command(api_client, "AddStock", {"sku": "SKU-RACED", "quantity": 3})
    orders = [place(api_client, "SKU-RACED", 1) for _ in range(3)]
    real_save, lost = CommandContext.save, []

    def lose_the_first_race(self, aggregate):
        if isinstance(aggregate, Inventory) and not lost:
            lost.append(self.savepoint)
            raise ConcurrencyError(aggregate.stream_id, aggregate.loaded_version, aggregate.loaded_version + 1)
        return real_save(self, aggregate)

    monkeypatch.setattr(CommandContext, "save", lose_the_first_race)
    run_saga()

    wait_until_caught_up()
    assert lost == [False]  # lost in the first pass, which has no savepoints
    assert [order_status(api_client, order_id) for order_id in orders] == ["confirmed"] * 3
    assert event_types("Inventory-SKU-RACED") == ["StockAdded"] + ["StockReserved"] * 3


def test_a_saga_command_whose_key_is_taken_is_replayed_and_not_applied_twice(api_client, without_sagas) -> None:
    """ReserveStock already ran under the saga's key. The batch's first pass reserves again and finds the
    key taken only when it claims its keys, at its end: that pass is undone, and the redone batch replays."""
    command(api_client, "AddStock", {"sku": "SKU-KEY", "quantity": 5})
    order_id = place(api_client, "SKU-KEY", 1)
    key = idempotency_key("OrderFulfillment", order_id, "reserve_stock")
    dispatch(ReserveStock(order_id=order_id), idempotency_key=key)

    with CaptureQueriesContext(connection) as queries:
        run_saga()
    savepoints = _command_savepoints(queries)

    wait_until_caught_up()
    assert order_status(api_client, order_id) == "confirmed"
    assert event_types("Inventory-SKU-KEY") == ["StockAdded", "StockReserved"]
    assert savepoints == 2  # the redone batch: ReserveStock (replayed), AuthorisePayment (its StockReserved)


def test_a_payment_authorised_before_the_timeout_fired_is_voided_by_the_compensation(api_client, without_sagas) -> None:
    """The saga asked for the payment and set its deadline, then stalled past it: the timeout releases the
    stock and cancels the order, and must also void the payment authorised meanwhile."""
    command(api_client, "AddStock", {"sku": "SKU-LATE", "quantity": 3})
    order_id = place(api_client, "SKU-LATE", 1)
    runner = ProjectionRunner(saga_registry.manager("OrderFulfillment"), batch_size=1)
    runner.run_batch()  # OrderPlaced: stock reserved
    runner.run_batch()  # StockReserved: payment authorised, deadline set; PaymentAuthorised waits in the log
    runner.release()

    assert saga_registry.manager("OrderFulfillment").fire_timeouts(now=timezone.now() + timedelta(days=1)) == 1
    run_saga()  # PaymentAuthorised: too late, ignored

    wait_until_caught_up()
    assert event_types(f"Payment-{order_id}") == ["PaymentAuthorised", "PaymentVoided"]
    assert event_types("Inventory-SKU-LATE") == ["StockAdded", "StockReserved", "StockReleased"]
    assert order_status(api_client, order_id) == "cancelled"
    saga = SagaState.objects.get(correlation_id=order_id)
    assert saga.status == SagaStatus.COMPENSATED
    compensated = [entry["command_type"] for entry in saga.history if entry["kind"] == "compensated"]
    assert compensated == ["VoidPayment", "ReleaseStock", "CancelOrder"]


def _command_savepoints(queries: CaptureQueriesContext) -> int:
    """Savepoints a command took of its own: the command bus's, just before it claims its idempotency key."""
    statements = [query["sql"] for query in queries.captured_queries]
    return sum(
        first.startswith("SAVEPOINT") and second.startswith("INSERT INTO eventsourcing_idempotency_record")
        for first, second in itertools.pairwise(statements)
    )


def test_cancelling_a_confirmed_order_releases_its_reservation_and_voids_its_payment(api_client) -> None:
    command(api_client, "AddStock", {"sku": "SKU-BACK", "quantity": 4})
    order_id = place(api_client, "SKU-BACK", 3)
    wait_until_caught_up()
    assert order_status(api_client, order_id) == "confirmed"
    command(api_client, "CancelOrder", {"order_id": order_id, "reason": "returned"})
    wait_until_caught_up()
    assert order_status(api_client, order_id) == "cancelled"
    assert inventory(api_client, "SKU-BACK") == (4, 0)
    assert event_types(f"Payment-{order_id}") == ["PaymentAuthorised", "PaymentVoided"]


def test_racing_orders_never_oversell(api_client, client_for, superuser) -> None:
    """25 concurrent PlaceOrder requests for one unit each of 10 in stock: exactly 10 confirmed."""
    command(api_client, "AddStock", {"sku": "SKU-RACE", "quantity": 10})
    barrier = threading.Barrier(25)
    order_ids: list[str] = []
    errors: list[BaseException] = []

    def order() -> None:
        client = client_for(superuser)
        try:
            barrier.wait()
            order_ids.append(place(client, "SKU-RACE", 1))
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=order) for _ in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    wait_until_caught_up(run=True, sagas=True)
    statuses = [order_status(api_client, order_id) for order_id in order_ids]
    assert (statuses.count("confirmed"), statuses.count("cancelled")) == (10, 15)
    assert inventory(api_client, "SKU-RACE") == (0, 10)
    available = 0
    for event in EventStore().read_stream("Inventory-SKU-RACE"):
        available += {"StockAdded": 1, "StockReleased": 1}.get(event.event_type, -1) * event.data.quantity
        assert available >= 0, f"stock went negative at version {event.version}"
    assert available == 0
    assert SagaState.objects.filter(status=SagaStatus.COMPLETED).count() == 10
    assert SagaState.objects.filter(status=SagaStatus.COMPENSATED).count() == 15


def test_the_order_total_is_a_decimal_string(api_client) -> None:
    command(api_client, "AddStock", {"sku": "SKU-D", "quantity": 1})
    order_id = place(api_client, "SKU-D", 1, unit_price="19.99")
    body = api_client.get(f"/api/orders/{order_id}/").json()
    assert body["total"] == "19.99"
