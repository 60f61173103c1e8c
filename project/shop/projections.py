"""The shop's projections: `order_summary` and `inventory_levels` (async, in batch mode).

Both bulk-write a whole batch: a batch of N events costs a handful of queries,
not N, which is what lets a rebuild replay tens of thousands of events a second.
"""

from __future__ import annotations

from collections import defaultdict

from django.db.models import F

from eventsourcing_app.projections import Projection, bulk_insert, register
from eventsourcing_app.store import RecordedEvent

from .models import InventoryLevel, OrderSummary

# Rows per bulk UPDATE: a few statements per batch of events, within every database's parameter limit.
UPDATE_CHUNK = 200
ORDER_STATUS = {"OrderConfirmed": "confirmed", "OrderCancelled": "cancelled", "OrderShipped": "shipped"}


@register
class OrderSummaryProjection(Projection):
    name = "order_summary"
    event_types = ("OrderPlaced", "OrderConfirmed", "OrderCancelled", "OrderShipped")

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        placed: dict[str, dict] = {}  # rows for bulk_insert: plain dicts are cheaper than model instances
        changes: dict[str, tuple[str, object]] = {}
        for event in events:
            data = event.data
            if event.event_type == "OrderPlaced":
                placed[data.order_id] = {
                    "order_id": data.order_id,
                    "customer_id": data.customer_id,
                    "status": "placed",
                    "total": data.total,
                    "items": [
                        {"sku": line.sku, "quantity": line.quantity, "unit_price": str(line.unit_price)}
                        for line in data.items
                    ],
                    "placed_at": event.recorded_at,
                    "updated_at": event.recorded_at,
                }
            elif data.order_id in placed:
                placed[data.order_id].update(status=ORDER_STATUS[event.event_type], updated_at=event.recorded_at)
            else:
                changes[data.order_id] = (ORDER_STATUS[event.event_type], event.recorded_at)
        bulk_insert(OrderSummary, placed.values())
        # One UPDATE ... CASE per chunk, not one per order: each change has its own updated_at.
        OrderSummary.objects.bulk_update(
            [
                OrderSummary(order_id=order_id, status=status, updated_at=at)
                for order_id, (status, at) in sorted(changes.items())
            ],
            ["status", "updated_at"],
            batch_size=UPDATE_CHUNK,
        )

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
        # Relative updates (F() + delta) of every known SKU in one UPDATE ... CASE per chunk, not one per SKU.
        InventoryLevel.objects.bulk_update(
            [
                InventoryLevel(
                    sku=sku, available=F("available") + deltas[sku][0], reserved=F("reserved") + deltas[sku][1]
                )
                for sku in sorted(existing)
            ],
            ["available", "reserved"],
            batch_size=UPDATE_CHUNK,
        )

    def clear(self) -> None:
        InventoryLevel.objects.all().delete()
