"""The shop's aggregates: an Order, the Inventory of one SKU, and an order's Payment."""

from __future__ import annotations

from decimal import Decimal

from eventsourcing_app.aggregates import Aggregate, applies
from eventsourcing_app.exceptions import CommandRejectedError

from .events import (
    OrderCancelled,
    OrderConfirmed,
    OrderLine,
    OrderPlaced,
    OrderShipped,
    PaymentAuthorised,
    PaymentDeclined,
    PaymentVoided,
    StockAdded,
    StockReleased,
    StockReserved,
)


class Order(Aggregate):
    """A customer's order: placed, then confirmed or cancelled, then shipped."""

    customer_id: str = ""
    status: str = "new"
    items: list[OrderLine]
    total: Decimal = Decimal("0")

    def __init__(self, aggregate_id: object) -> None:
        super().__init__(aggregate_id)
        self.items = []

    @classmethod
    def place(
        cls,
        order_id: object,
        customer_id: str,
        items: list[OrderLine],
        *,
        email: str | None = None,
        shipping_address: str | None = None,
    ) -> Order:
        if not items:
            raise CommandRejectedError("An order needs at least one item.")
        if any(line.quantity <= 0 or line.unit_price < 0 for line in items):
            raise CommandRejectedError("Quantities must be positive and prices not negative.")
        order = cls(order_id)
        total = sum((line.subtotal for line in items), Decimal("0"))
        order.raise_event(
            OrderPlaced(
                order_id=order.id,
                customer_id=customer_id,
                items=items,
                total=total,
                email=email,
                shipping_address=shipping_address,
            )
        )
        return order

    def confirm(self) -> None:
        if self.status != "placed":
            raise CommandRejectedError(f"Only a placed order can be confirmed; this one is {self.status}.")
        self.raise_event(OrderConfirmed(order_id=self.id))

    def cancel(self, reason: str) -> None:
        """Cancel a placed or confirmed order; cancelling a cancelled one changes nothing."""
        if self.status == "cancelled":
            return
        if self.status not in ("placed", "confirmed"):
            raise CommandRejectedError(f"A {self.status} order cannot be cancelled.")
        self.raise_event(OrderCancelled(order_id=self.id, reason=reason))

    def ship(self) -> None:
        if self.status != "confirmed":
            raise CommandRejectedError(f"Only a confirmed order can be shipped; this one is {self.status}.")
        self.raise_event(OrderShipped(order_id=self.id))

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.customer_id = event.customer_id
        self.items = list(event.items)
        self.total = event.total
        self.status = "placed"

    @applies(OrderConfirmed)
    def _confirmed(self, event: OrderConfirmed) -> None:
        self.status = "confirmed"

    @applies(OrderCancelled)
    def _cancelled(self, event: OrderCancelled) -> None:
        self.status = "cancelled"

    @applies(OrderShipped)
    def _shipped(self, event: OrderShipped) -> None:
        self.status = "shipped"


class Inventory(Aggregate):
    """The stock of one SKU (the aggregate id). Reservations never exceed what is available."""

    available: int = 0
    reservations: dict[str, int]

    def __init__(self, aggregate_id: object) -> None:
        super().__init__(aggregate_id)
        self.reservations = {}

    @property
    def reserved(self) -> int:
        return sum(self.reservations.values())

    def add_stock(self, quantity: int) -> None:
        if quantity <= 0:
            raise CommandRejectedError("Stock added must be a positive quantity.")
        self.raise_event(StockAdded(sku=self.id, quantity=quantity))

    def reserve(self, order_id: str, quantity: int) -> None:
        if order_id in self.reservations:
            return
        if quantity > self.available:
            raise CommandRejectedError(f"Only {self.available} of {self.id} available, {quantity} asked for.")
        self.raise_event(StockReserved(sku=self.id, order_id=order_id, quantity=quantity))

    def release(self, order_id: str) -> None:
        quantity = self.reservations.get(order_id)
        if quantity:
            self.raise_event(StockReleased(sku=self.id, order_id=order_id, quantity=quantity))

    @applies(StockAdded)
    def _added(self, event: StockAdded) -> None:
        self.available += event.quantity

    @applies(StockReserved)
    def _reserved(self, event: StockReserved) -> None:
        self.available -= event.quantity
        self.reservations[event.order_id] = event.quantity

    @applies(StockReleased)
    def _released(self, event: StockReleased) -> None:
        self.available += event.quantity
        self.reservations.pop(event.order_id, None)


class Payment(Aggregate):
    """The payment of one order (the aggregate id is the order id): authorised or declined, once;
    an authorised one may be voided."""

    status: str = "new"
    amount: Decimal = Decimal("0")

    def authorise(self, amount: Decimal, limit: Decimal) -> None:
        """Authorise `amount`, or decline it when over `limit`; a decided payment stays decided."""
        if self.status != "new":
            return
        if amount > limit:
            self.raise_event(
                PaymentDeclined(order_id=self.id, amount=amount, reason=f"{amount} is over the limit of {limit}")
            )
        else:
            self.raise_event(PaymentAuthorised(order_id=self.id, amount=amount))

    def void(self) -> None:
        """Release an authorised payment; a declined, voided or never decided one holds nothing to release."""
        if self.status == "authorised":
            self.raise_event(PaymentVoided(order_id=self.id, amount=self.amount))

    @applies(PaymentAuthorised)
    def _authorised(self, event: PaymentAuthorised) -> None:
        self.status, self.amount = "authorised", event.amount

    @applies(PaymentDeclined)
    def _declined(self, event: PaymentDeclined) -> None:
        self.status, self.amount = "declined", event.amount

    @applies(PaymentVoided)
    def _voided(self, event: PaymentVoided) -> None:
        self.status = "voided"
