"""OrderFulfillment: reserve stock, authorise payment, confirm — or cancel, undoing what was done.

OrderPlaced → ReserveStock → (StockReserved) → AuthorisePayment → (PaymentAuthorised) → ConfirmOrder.
Stock short: ReserveStock is refused, nothing was reserved, the order is cancelled.
Payment declined (or not decided before SHOP_PAYMENT_TIMEOUT): the stock is released and the order cancelled
(and a payment authorised after all, by then, is voided).
An order cancelled by its customer mid-way: whatever was reserved is released.
"""

from __future__ import annotations

from django.conf import settings

from eventsourcing_app.sagas import Saga, SagaInstance, Step, on, register
from eventsourcing_app.store import RecordedEvent

from .commands import AuthorisePayment, CancelOrder, ConfirmOrder, ReleaseStock, ReserveStock, VoidPayment

RESERVE, PAY, CONFIRM = "reserve_stock", "authorise_payment", "confirm_order"


@register
class OrderFulfillment(Saga):
    starts_with = ("OrderPlaced",)
    categories = ("Order", "Inventory", "Payment")
    correlation_field = "order_id"

    @on("OrderPlaced")
    def placed(self, saga: SagaInstance, event: RecordedEvent) -> list[Step]:
        order_id = event.data.order_id
        saga.data["customer_id"] = event.data.customer_id
        # Placing the order already happened: if a later step fails, undoing it means cancelling the order.
        saga.compensate_with("place_order", "cancel_order")
        return [Step(RESERVE, ReserveStock(order_id=order_id), compensate=ReleaseStock(order_id=order_id))]

    @on("StockReserved")
    def stock_reserved(self, saga: SagaInstance, event: RecordedEvent) -> list[Step]:
        # One StockReserved per SKU of the order: the first moves the saga on, the others find it moved.
        if saga.current_step != RESERVE:
            return []
        saga.set_deadline(settings.SHOP_PAYMENT_TIMEOUT)
        order_id = event.data.order_id
        return [Step(PAY, AuthorisePayment(order_id=order_id), compensate=VoidPayment(order_id=order_id))]

    @on("PaymentAuthorised")
    def payment_authorised(self, saga: SagaInstance, event: RecordedEvent) -> list[Step]:
        saga.clear_deadline()
        saga.complete()
        return [Step(CONFIRM, ConfirmOrder(order_id=event.data.order_id))]

    @on("PaymentDeclined")
    def payment_declined(self, saga: SagaInstance, event: RecordedEvent) -> None:
        saga.data["cancel_reason"] = f"payment declined: {event.data.reason}"
        saga.drop_compensation(PAY)  # nothing was authorised, so there is nothing to void
        saga.fail(saga.data["cancel_reason"])

    @on("OrderCancelled")
    def cancelled(self, saga: SagaInstance, event: RecordedEvent) -> None:
        # Cancelled by the customer (or by us, above, once this saga has finished and ignores it):
        # the order needs no cancelling, only its reservation releasing.
        saga.drop_compensation("place_order")
        saga.fail(f"order cancelled: {event.data.reason}")

    def cancel_order(self, saga: SagaInstance) -> CancelOrder:
        """The compensation of placing the order, with the reason the saga failed."""
        reason = saga.data.get("cancel_reason") or _reason(saga.state.last_error)
        return CancelOrder(order_id=saga.correlation_id, reason=reason)

    def on_timeout(self, saga: SagaInstance) -> None:
        saga.data["cancel_reason"] = "payment not authorised in time"
        saga.fail(saga.data["cancel_reason"])


def _reason(error: str) -> str:
    if error.startswith(RESERVE):
        return "out of stock"
    return error[:500] or "order could not be fulfilled"
