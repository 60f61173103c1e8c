"""The shop's domain rules, on its aggregates."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from eventsourcing_app.exceptions import CommandRejectedError
from project.shop.aggregates import Inventory, Order, Payment
from project.shop.events import (
    OrderCancelled,
    OrderLine,
    PaymentAuthorised,
    PaymentVoided,
    StockReleased,
    StockReserved,
)


def placed_order() -> Order:
    return Order.place(uuid.uuid4(), "customer-1", [OrderLine("SKU-1", 2, Decimal("10.50"))])


def test_placing_totals_the_lines() -> None:
    order = Order.place(
        uuid.uuid4(), "c", [OrderLine("SKU-1", 2, Decimal("10.50")), OrderLine("SKU-2", 1, Decimal("0.99"))]
    )
    assert (order.status, order.total) == ("placed", Decimal("21.99"))


@pytest.mark.parametrize(
    "items",
    [[], [OrderLine("SKU-1", 0, Decimal("1"))], [OrderLine("SKU-1", 1, Decimal("-1"))]],
    ids=["no items", "zero quantity", "negative price"],
)
def test_an_order_must_make_sense(items: list[OrderLine]) -> None:
    with pytest.raises(CommandRejectedError):
        Order.place(uuid.uuid4(), "c", items)


def test_lifecycle_placed_confirmed_shipped() -> None:
    order = placed_order()
    order.confirm()
    order.ship()
    assert order.status == "shipped"
    with pytest.raises(CommandRejectedError):
        order.cancel("too late")


def test_a_cancelled_order_cannot_be_confirmed_or_shipped() -> None:
    order = placed_order()
    order.cancel("out of stock")
    assert isinstance(order.pending_events[-1], OrderCancelled)
    for action in (order.confirm, order.ship):
        with pytest.raises(CommandRejectedError):
            action()


def test_reservations_never_exceed_stock_and_are_idempotent_per_order() -> None:
    inventory = Inventory("SKU-1")
    inventory.add_stock(5)
    inventory.reserve("order-1", 3)
    inventory.reserve("order-1", 3)  # the same order again: nothing new
    assert (inventory.available, inventory.reserved) == (2, 3)
    with pytest.raises(CommandRejectedError):
        inventory.reserve("order-2", 3)
    inventory.release("order-1")
    inventory.release("order-1")
    assert (inventory.available, inventory.reserved) == (5, 0)
    assert [type(e) for e in inventory.pending_events].count(StockReserved) == 1
    assert [type(e) for e in inventory.pending_events].count(StockReleased) == 1


def test_stock_added_must_be_positive() -> None:
    with pytest.raises(CommandRejectedError):
        Inventory("SKU-1").add_stock(0)


def test_a_payment_is_decided_once_and_only_an_authorised_one_is_voided() -> None:
    authorised, declined, undecided = Payment("order-1"), Payment("order-2"), Payment("order-3")
    authorised.authorise(Decimal("50"), limit=Decimal("100"))
    authorised.authorise(Decimal("50"), limit=Decimal("10"))  # decided already: stays authorised
    declined.authorise(Decimal("500"), limit=Decimal("100"))

    for payment in (authorised, declined, undecided):
        payment.void()
        payment.void()

    assert [type(e) for e in authorised.pending_events] == [PaymentAuthorised, PaymentVoided]
    assert authorised.pending_events[-1].amount == Decimal("50")
    assert (authorised.status, declined.status, undecided.status) == ("voided", "declined", "new")
    assert len(declined.pending_events) == 1
    assert not undecided.pending_events
