"""The shop's projections: `order_summary` and `inventory_levels` (async, in batch mode).

Both bulk-write a whole batch: a batch of N events costs a handful of queries,
not N, which is what lets a rebuild replay tens of thousands of events a second.
"""

from __future__ import annotations

from collections import defaultdict

from django.db.models import F

from eventsourcing_app.projections import Projection, register
from eventsourcing_app.store import RecordedEvent

from .models import InventoryLevel, OrderSummary

ORDER_STATUS = {"OrderConfirmed": "confirmed", "OrderCancelled": "cancelled", "OrderShipped": "shipped"}


@register
class OrderSummaryProjection(Projection):
    name = "order_summary"
    event_types = ("OrderPlaced", "OrderConfirmed", "OrderCancelled", "OrderShipped")

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        placed: dict[str, OrderSummary] = {}
        changes: dict[str, tuple[str, object]] = {}
        for event in events:
            data = event.data
            if event.event_type == "OrderPlaced":
                placed[data.order_id] = OrderSummary(
                    order_id=data.order_id,
                    customer_id=data.customer_id,
                    status="placed",
                    total=data.total,
                    items=[
                        {"sku": line.sku, "quantity": line.quantity, "unit_price": str(line.unit_price)}
                        for line in data.items
                    ],
                    placed_at=event.recorded_at,
                    updated_at=event.recorded_at,
                )
            elif data.order_id in placed:
                placed[data.order_id].status = ORDER_STATUS[event.event_type]
                placed[data.order_id].updated_at = event.recorded_at
            else:
                changes[data.order_id] = (ORDER_STATUS[event.event_type], event.recorded_at)
        OrderSummary.objects.bulk_create(placed.values())
        by_status: dict[tuple[str, object], list[str]] = defaultdict(list)
        for order_id, change in changes.items():
            by_status[change].append(order_id)
        for (status, at), order_ids in by_status.items():
            OrderSummary.objects.filter(order_id__in=order_ids).update(status=status, updated_at=at)

    def clear(self) -> None:
        OrderSummary.objects.all().delete()


@register
class InventoryLevelsProjection(Projection):
    name = "inventory_levels"
    event_types = ("StockAdded", "StockReserved", "StockReleased")

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        deltas: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # sku -> [available, reserved]
        for event in events:
            data, delta = event.data, deltas[event.data.sku]
            if event.event_type == "StockAdded":
                delta[0] += data.quantity
            elif event.event_type == "StockReserved":
                delta[0] -= data.quantity
                delta[1] += data.quantity
            else:
                delta[0] += data.quantity
                delta[1] -= data.quantity
        existing = set(InventoryLevel.objects.filter(sku__in=deltas).values_list("sku", flat=True))
        InventoryLevel.objects.bulk_create(
            InventoryLevel(sku=sku, available=a, reserved=r) for sku, (a, r) in deltas.items() if sku not in existing
        )
        for sku in existing:
            available, reserved = deltas[sku]
            InventoryLevel.objects.filter(sku=sku).update(
                available=F("available") + available, reserved=F("reserved") + reserved
            )

    def clear(self) -> None:
        InventoryLevel.objects.all().delete()
