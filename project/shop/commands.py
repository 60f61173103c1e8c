"""The shop's commands and their handlers (discovered by eventsourcing_app when Django starts).

PlaceOrder, CancelOrder, ShipOrder and AddStock are what clients send; the
others are the steps the OrderFulfillment saga takes.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from rest_framework import serializers

from eventsourcing_app.commands import Command, CommandContext, handles
from eventsourcing_app.exceptions import CommandRejectedError

from .aggregates import Inventory, Order, Payment
from .events import OrderLine

SKU_FIELD = {"max_length": 64, "allow_blank": False}


class OrderItem(serializers.Serializer):
    sku = serializers.CharField(**SKU_FIELD)
    quantity = serializers.IntegerField(min_value=1, max_value=1_000_000)
    unit_price = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=Decimal("0"))


class AddStock(Command):
    """Add units of a SKU to the stock (creates the SKU's inventory on first use)."""

    sku = serializers.CharField(**SKU_FIELD)
    quantity = serializers.IntegerField(min_value=1, max_value=1_000_000)
    example = {"sku": "SKU-KETTLE", "quantity": 10}


class PlaceOrder(Command):
    """Place an order; the fulfilment saga then reserves stock, takes payment and confirms or cancels it."""

    customer_id = serializers.CharField(max_length=100)
    items = OrderItem(many=True, allow_empty=False, max_length=100)
    email = serializers.EmailField(required=False)
    shipping_address = serializers.CharField(required=False, max_length=500)
    example = {
        "customer_id": "customer-42",
        "items": [{"sku": "SKU-KETTLE", "quantity": 1, "unit_price": "24.90"}],
        "email": "ada@example.com",
    }


class OrderCommand(Command):
    order_id = serializers.UUIDField()


class CancelOrder(OrderCommand):
    """Cancel a placed or confirmed order."""

    reason = serializers.CharField(max_length=500, required=False, default="cancelled by request")
    example = {"order_id": "3f2a7c1e-5b9d-4e8f-a1c2-6d7e8f9a0b1c", "reason": "customer changed their mind"}


class ShipOrder(OrderCommand):
    """Ship a confirmed order."""

    example = {"order_id": "3f2a7c1e-5b9d-4e8f-a1c2-6d7e8f9a0b1c"}


class ConfirmOrder(OrderCommand):
    """Confirm a placed order (its stock is reserved and its payment authorised)."""


class ReserveStock(OrderCommand):
    """Reserve the stock of every line of an order, all or none."""


class ReleaseStock(OrderCommand):
    """Release what an order had reserved."""


class AuthorisePayment(OrderCommand):
    """Authorise an order's total; totals over SHOP_PAYMENT_LIMIT are declined."""


class VoidPayment(OrderCommand):
    """Release an order's authorised payment (nothing to do if it was declined or never decided)."""


@handles(AddStock)
def add_stock(command: AddStock, context: CommandContext) -> None:
    inventory = context.load_or_new(Inventory, command.sku)
    inventory.add_stock(command.quantity)
    context.save(inventory)


@handles(PlaceOrder)
def place_order(command: PlaceOrder, context: CommandContext) -> None:
    items = [OrderLine(sku=i["sku"], quantity=i["quantity"], unit_price=i["unit_price"]) for i in command.items]
    order = Order.place(
        uuid.uuid4(),
        command.customer_id,
        items,
        email=command.email,
        shipping_address=command.shipping_address,
    )
    context.save(order)


@handles(CancelOrder)
def cancel_order(command: CancelOrder, context: CommandContext) -> None:
    """Cancel the order, release whatever stock it holds and void its authorised payment, in one transaction."""
    order = context.load(Order, command.order_id)
    order.cancel(command.reason)
    context.save(order)
    _release(order, context)
    payment = context.repository(Payment).load_or_new(order.id)
    payment.void()
    context.save(payment)  # saves nothing when no payment was authorised
    context.touched = order


@handles(ShipOrder)
def ship_order(command: ShipOrder, context: CommandContext) -> None:
    order = context.load(Order, command.order_id)
    order.ship()
    context.save(order)


@handles(ConfirmOrder)
def confirm_order(command: ConfirmOrder, context: CommandContext) -> None:
    order = context.load(Order, command.order_id)
    order.confirm()
    context.save(order)


@handles(ReserveStock)
def reserve_stock(command: ReserveStock, context: CommandContext) -> None:
    order = context.repository(Order).load(command.order_id)
    if order.status != "placed":
        raise CommandRejectedError(f"Stock is reserved for placed orders only; this one is {order.status}.")
    for sku, quantity in _quantities(order).items():
        inventory = context.repository(Inventory).load_or_new(sku)
        inventory.reserve(order.id, quantity)
        context.save(inventory)
    context.touched = order


@handles(ReleaseStock)
def release_stock(command: ReleaseStock, context: CommandContext) -> None:
    order = context.repository(Order).load(command.order_id)
    _release(order, context)
    context.touched = order


def _release(order: Order, context: CommandContext) -> None:
    """Release the order's reservation of each of its SKUs (SKUs it holds nothing of are left alone)."""
    for sku in _quantities(order):
        inventory = context.repository(Inventory).load_or_new(sku)
        inventory.release(order.id)
        context.save(inventory)  # saves nothing when nothing was released


@handles(AuthorisePayment)
def authorise_payment(command: AuthorisePayment, context: CommandContext) -> None:
    order = context.repository(Order).load(command.order_id)
    payment = context.repository(Payment).load_or_new(order.id)
    payment.authorise(order.total, Decimal(settings.SHOP_PAYMENT_LIMIT))
    context.save(payment)


@handles(VoidPayment)
def void_payment(command: VoidPayment, context: CommandContext) -> None:
    payment = context.repository(Payment).load_or_new(command.order_id)
    payment.void()
    context.save(payment)  # saves nothing when there was nothing to release


def _quantities(order: Order) -> dict[str, int]:
    """Units per SKU over the order's lines (a SKU may appear on several lines)."""
    quantities: dict[str, int] = {}
    for line in order.items:
        quantities[line.sku] = quantities.get(line.sku, 0) + line.quantity
    return quantities
