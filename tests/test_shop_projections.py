"""The shop's read models, `order_summary` and `inventory_levels`, fed by its commands, and their endpoints.

Commands are dispatched in-process; the projections' runners are then driven
directly (no worker): in a test wrapped in a transaction no on-commit nudge fires.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from eventsourcing_app.aggregates import Repository
from eventsourcing_app.commands import dispatch
from eventsourcing_app.projections import ProjectionRunner, projection_registry, rebuild
from project.shop.aggregates import Order
from project.shop.commands import (
    AddStock,
    CancelOrder,
    ConfirmOrder,
    PlaceOrder,
    ReleaseStock,
    ReserveStock,
    ShipOrder,
)
from project.shop.models import InventoryLevel, OrderSummary

pytestmark = pytest.mark.django_db

SHOP_PROJECTIONS = ("order_summary", "inventory_levels")


def run_shop_projections(*, batch_size: int | None = None) -> None:
    for name in SHOP_PROJECTIONS:
        ProjectionRunner(projection_registry.lookup(name), batch_size=batch_size).run()


def place(customer_id: str, *lines: tuple[str, int, str]) -> str:
    """Place an order of (sku, quantity, unit price) lines; its order id."""
    items = [{"sku": sku, "quantity": quantity, "unit_price": price} for sku, quantity, price in lines]
    return dispatch(PlaceOrder(customer_id=customer_id, items=items)).aggregate_id


def level(sku: str) -> tuple[int, int]:
    stock = InventoryLevel.objects.get(sku=sku)
    return stock.available, stock.reserved


def tables() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both read models, row by row, in a stable order."""
    orders = list(OrderSummary.objects.order_by("order_id").values())
    levels = list(InventoryLevel.objects.order_by("sku").values())
    return orders, levels


@pytest.fixture
def shop() -> dict[str, str]:
    """Stock for two SKUs and four orders taken through every status; returns the order ids by name."""
    dispatch(AddStock(sku="SKU-KETTLE", quantity=10))
    dispatch(AddStock(sku="SKU-MUG", quantity=5))
    orders = {
        "shipped": place("ada", ("SKU-KETTLE", 2, "24.90"), ("SKU-MUG", 1, "3.50")),
        "confirmed": place("bob", ("SKU-KETTLE", 1, "24.90")),
        "cancelled": place("ada", ("SKU-MUG", 3, "3.50")),
        "placed": place("cyd", ("SKU-MUG", 1, "3.50")),
    }
    for name in ("shipped", "confirmed", "cancelled"):
        dispatch(ReserveStock(order_id=orders[name]))
    for name in ("shipped", "confirmed"):
        dispatch(ConfirmOrder(order_id=orders[name]))
    dispatch(ShipOrder(order_id=orders["shipped"]))
    dispatch(CancelOrder(order_id=orders["cancelled"], reason="changed my mind"))
    dispatch(ReleaseStock(order_id=orders["cancelled"]))
    return orders


# ------------------------------------------------------------------ the read models
class TestOrderSummary:
    def test_each_order_has_its_status_total_and_items(self, shop: dict[str, str]) -> None:
        run_shop_projections()
        summaries = {str(s.order_id): s for s in OrderSummary.objects.all()}
        assert {name: summaries[order_id].status for name, order_id in shop.items()} == {
            "shipped": "shipped",
            "confirmed": "confirmed",
            "cancelled": "cancelled",
            "placed": "placed",
        }
        shipped = summaries[shop["shipped"]]
        assert (shipped.customer_id, shipped.total) == ("ada", Decimal("53.30"))
        assert shipped.items == [
            {"sku": "SKU-KETTLE", "quantity": 2, "unit_price": "24.90"},
            {"sku": "SKU-MUG", "quantity": 1, "unit_price": "3.50"},
        ]
        assert shipped.updated_at > shipped.placed_at

    def test_the_read_model_agrees_with_the_aggregates(self, shop: dict[str, str]) -> None:
        run_shop_projections()
        repository = Repository(Order)
        for order_id in shop.values():
            order, summary = repository.load(order_id), OrderSummary.objects.get(order_id=order_id)
            assert (summary.status, summary.total, summary.customer_id) == (
                order.status,
                order.total,
                order.customer_id,
            )

    def test_an_order_appears_once_its_events_are_projected(self) -> None:
        order_id = place("dee", ("SKU-X", 1, "1.00"))
        assert not OrderSummary.objects.filter(order_id=order_id).exists()
        run_shop_projections()
        assert OrderSummary.objects.get(order_id=order_id).status == "placed"
        dispatch(CancelOrder(order_id=order_id))
        assert OrderSummary.objects.get(order_id=order_id).status == "placed"  # until the runner runs
        run_shop_projections()
        assert OrderSummary.objects.get(order_id=order_id).status == "cancelled"


class TestInventoryLevels:
    def test_available_excludes_reserved_stock(self, shop: dict[str, str]) -> None:
        run_shop_projections()
        # Kettles: 10 in, 2 + 1 reserved. Mugs: 5 in, 1 reserved (the cancelled order's 3 were released).
        assert level("SKU-KETTLE") == (7, 3)
        assert level("SKU-MUG") == (4, 1)

    def test_a_reservation_drops_available_at_once_and_a_release_gives_it_back(self) -> None:
        dispatch(AddStock(sku="SKU-LAMP", quantity=4))
        order_id = place("eve", ("SKU-LAMP", 3, "10.00"))
        run_shop_projections()
        assert level("SKU-LAMP") == (4, 0)
        dispatch(ReserveStock(order_id=order_id))
        run_shop_projections()
        assert level("SKU-LAMP") == (1, 3)
        dispatch(CancelOrder(order_id=order_id))
        dispatch(ReleaseStock(order_id=order_id))
        run_shop_projections()
        assert level("SKU-LAMP") == (4, 0)
        dispatch(AddStock(sku="SKU-LAMP", quantity=2))
        run_shop_projections()
        assert level("SKU-LAMP") == (6, 0)


# ------------------------------------------------------------------ endpoints
class TestEndpoints:
    def test_the_order_list_newest_first_and_filtered(self, plain_client, shop: dict[str, str]) -> None:
        run_shop_projections()
        response = plain_client.get("/api/orders/")
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"next", "previous", "results"}
        assert [order["order_id"] for order in body["results"]] == list(reversed(shop.values()))
        ada = plain_client.get("/api/orders/", {"customer_id": "ada"}).json()["results"]
        assert {order["order_id"] for order in ada} == {shop["shipped"], shop["cancelled"]}
        cancelled = plain_client.get("/api/orders/", {"status": "cancelled"}).json()["results"]
        assert [order["order_id"] for order in cancelled] == [shop["cancelled"]]

    def test_an_order_in_detail(self, plain_client, shop: dict[str, str]) -> None:
        run_shop_projections()
        response = plain_client.get(f"/api/orders/{shop['shipped']}/")
        assert response.status_code == 200
        order = response.json()
        assert {k: order[k] for k in ("order_id", "customer_id", "status", "total")} == {
            "order_id": shop["shipped"],
            "customer_id": "ada",
            "status": "shipped",
            "total": "53.30",
        }
        assert order["items"][0] == {"sku": "SKU-KETTLE", "quantity": 2, "unit_price": "24.90"}

    def test_an_order_is_404_until_it_is_projected(self, plain_client) -> None:
        order_id = place("fay", ("SKU-Y", 1, "9.99"))
        response = plain_client.get(f"/api/orders/{order_id}/")
        assert response.status_code == 404
        assert response["Content-Type"].startswith("application/problem+json")
        assert response.json()["status"] == 404
        run_shop_projections()
        assert plain_client.get(f"/api/orders/{order_id}/").json()["total"] == "9.99"

    @pytest.mark.parametrize(
        "order_id",
        [str(uuid.uuid4()), uuid.uuid4().hex, "not-a-uuid", "123", "%20", "00000000-0000-0000-0000-00000000000g"],
    )
    def test_unknown_or_malformed_order_ids_are_404(self, plain_client, order_id: str) -> None:
        assert plain_client.get(f"/api/orders/{order_id}/").status_code == 404

    def test_inventory_is_404_before_the_first_add_stock_is_projected(self, plain_client) -> None:
        assert plain_client.get("/api/inventory/SKU-NEW/").status_code == 404
        dispatch(AddStock(sku="SKU-NEW", quantity=3))
        assert plain_client.get("/api/inventory/SKU-NEW/").status_code == 404
        run_shop_projections()
        response = plain_client.get("/api/inventory/SKU-NEW/")
        assert response.status_code == 200
        assert response.json() == {"sku": "SKU-NEW", "available": 3, "reserved": 0}

    def test_the_read_endpoints_need_authentication(self, client) -> None:
        assert client.get("/api/orders/").status_code in {401, 403}
        assert client.get("/api/inventory/SKU-NEW/").status_code in {401, 403}


# ------------------------------------------------------------------ batch mode
def busy_shop(orders: int = 40, skus: int = 6) -> None:
    """Many orders over a few SKUs, in every status, with stock added in several steps."""
    for n in range(skus):
        dispatch(AddStock(sku=f"SKU-{n}", quantity=50))
    for n in range(orders):
        order_id = place(
            f"customer-{n % 7}", (f"SKU-{n % skus}", 1 + n % 3, f"{n}.25"), (f"SKU-{(n + 1) % skus}", 1, "2.00")
        )
        if n % 5 == 4:
            continue  # stays placed
        dispatch(ReserveStock(order_id=order_id))
        if n % 5 == 3:
            dispatch(CancelOrder(order_id=order_id))
            dispatch(ReleaseStock(order_id=order_id))
            continue
        dispatch(ConfirmOrder(order_id=order_id))
        if n % 5 in (1, 2):
            dispatch(ShipOrder(order_id=order_id))
        if n % 9 == 0:
            dispatch(AddStock(sku=f"SKU-{n % skus}", quantity=5))


def test_batches_of_one_and_of_five_hundred_give_the_same_tables() -> None:
    busy_shop()
    run_shop_projections(batch_size=1)
    one_by_one = tables()
    assert len(one_by_one[0]) == 40
    for name in SHOP_PROJECTIONS:
        rebuild(name, batch_size=500)
    assert tables() == one_by_one
    for name in SHOP_PROJECTIONS:
        rebuild(name, batch_size=7)
    assert tables() == one_by_one


@pytest.mark.parametrize("name", SHOP_PROJECTIONS)
def test_a_batch_costs_a_bounded_number_of_queries_not_one_per_event(name: str, django_assert_max_num_queries) -> None:
    """Every order and SKU already has a row when the batch updates them, each event at its own time."""
    for n in range(60):
        dispatch(AddStock(sku=f"SKU-{n}", quantity=5))
    order_ids = [place(f"customer-{n}", (f"SKU-{n}", 1, "1.50")) for n in range(60)]
    runner = ProjectionRunner(projection_registry.lookup(name), batch_size=500)
    runner.run_batch()
    for n, order_id in enumerate(order_ids):
        dispatch(ReserveStock(order_id=order_id))
        dispatch(ConfirmOrder(order_id=order_id) if n % 2 else CancelOrder(order_id=order_id))
        dispatch(AddStock(sku=f"SKU-{n}", quantity=1))
    with django_assert_max_num_queries(12):
        assert runner.run_batch()
    runner.release()
    assert OrderSummary.objects.filter(status="confirmed").count() == (30 if name == "order_summary" else 0)
    # A cancellation releases the order's stock: confirmed orders' SKUs hold 1, cancelled ones' nothing.
    assert InventoryLevel.objects.filter(available=5, reserved=1).count() == (30 if name == "inventory_levels" else 0)
    assert InventoryLevel.objects.filter(available=6, reserved=0).count() == (30 if name == "inventory_levels" else 0)
