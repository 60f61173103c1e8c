"""The shop's events. Their names are part of the stored log: never rename one."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from eventsourcing_app.store import DomainEvent


@dataclass(frozen=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price: Decimal

    @property
    def subtotal(self) -> Decimal:
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class OrderPlaced(DomainEvent):
    order_id: str
    customer_id: str
    items: list[OrderLine]
    total: Decimal
    # Personal data of the customer (the data subject), optional.
    email: str | None = None
    shipping_address: str | None = None


@dataclass(frozen=True)
class OrderConfirmed(DomainEvent):
    order_id: str


@dataclass(frozen=True)
class OrderCancelled(DomainEvent):
    order_id: str
    reason: str


@dataclass(frozen=True)
class OrderShipped(DomainEvent):
    order_id: str


@dataclass(frozen=True)
class StockAdded(DomainEvent):
    sku: str
    quantity: int


@dataclass(frozen=True)
class StockReserved(DomainEvent):
    sku: str
    order_id: str
    quantity: int


@dataclass(frozen=True)
class StockReleased(DomainEvent):
    sku: str
    order_id: str
    quantity: int


@dataclass(frozen=True)
class PaymentAuthorised(DomainEvent):
    order_id: str
    amount: Decimal


@dataclass(frozen=True)
class PaymentVoided(DomainEvent):
    """An authorised payment released: the order it was for did not go through."""

    order_id: str
    amount: Decimal


@dataclass(frozen=True)
class PaymentDeclined(DomainEvent):
    order_id: str
    amount: Decimal
    reason: str
