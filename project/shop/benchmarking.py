"""Events for `manage.py benchmark`'s catchup and rebuild figures: placed and confirmed orders."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal

from .events import OrderConfirmed, OrderLine, OrderPlaced

LINES = [OrderLine(sku="SKU-KETTLE", quantity=1, unit_price=Decimal("24.90")), OrderLine("SKU-MUG", 4, Decimal("6.50"))]


def order_events(count: int) -> Iterator[tuple[str, list]]:
    """About `count` order_summary events: each order is placed and confirmed (two events, one append)."""
    for n in range(max(1, count // 2)):
        order_id = str(uuid.uuid4())
        placed = OrderPlaced(order_id=order_id, customer_id=f"customer-{n % 1000}", items=LINES, total=Decimal("50.90"))
        yield f"Order-{order_id}", [placed, OrderConfirmed(order_id=order_id)]
