"""What `manage.py benchmark` measures the example shop with: order events (catchup, rebuild) and orders (sagas)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from decimal import Decimal

from eventsourcing_app.commands import dispatch
from eventsourcing_app.models import Checkpoint

from .commands import AddStock, PlaceOrder
from .events import OrderConfirmed, OrderLine, OrderPlaced
from .models import OrderSummary

FINAL_STATUSES = ("confirmed", "cancelled")
LINES = [OrderLine(sku="SKU-KETTLE", quantity=1, unit_price=Decimal("24.90")), OrderLine("SKU-MUG", 4, Decimal("6.50"))]


def order_events(count: int) -> Iterator[tuple[str, list]]:
    """About `count` order_summary events: each order is placed and confirmed (two events, one append)."""
    for n in range(max(1, count // 2)):
        order_id = str(uuid.uuid4())
        placed = OrderPlaced(order_id=order_id, customer_id=f"customer-{n % 1000}", items=LINES, total=Decimal("50.90"))
        yield f"Order-{order_id}", [placed, OrderConfirmed(order_id=order_id)]


class OrderFulfillmentWorkload:
    """`manage.py benchmark`'s saga figures (EVENTSOURCING["BENCHMARK_SAGA"]): orders through OrderFulfillment.

    Stock is added for every order and totals stay under SHOP_PAYMENT_LIMIT, so
    each saga takes its whole happy path: reserve, authorise, confirm. Each run's
    orders share SKUS SKUs of its own, so no Inventory stream grows across runs.
    """

    SKUS = 20

    def __init__(self) -> None:
        self._seen_position: int | None = None
        self._asked: set[str] = set()  # the ids asked about at that position

    def prepare(self, count: int, tag: str) -> None:
        """Untimed: stock for `count` orders (an order takes at most one unit of a SKU)."""
        for sku in self._skus(tag):
            dispatch(AddStock(sku=sku, quantity=count))

    def start(self, tag: str, index: int) -> str:
        """Place order `index` of the run (one or two lines); its id."""
        skus = self._skus(tag)
        items = [
            {"sku": skus[(index * 7 + line) % self.SKUS], "quantity": 1, "unit_price": "9.90"}
            for line in range(1 + index % 2)
        ]
        return str(dispatch(PlaceOrder(customer_id=tag, items=items)).aggregate_id)

    def finished(self, ids: Collection[str]) -> dict[str, str]:
        """The orders among `ids` whose final status (confirmed or cancelled) `order_summary` shows, with it.

        Polled every few ms with up to all of a run's orders: while the projection's checkpoint
        has not moved, its rows have not changed either (they commit together), so one
        single-row read answers "nothing new" about ids already asked about at that position.
        """
        position = Checkpoint.objects.filter(name="order_summary").values_list("position", flat=True).first()
        if position is not None and position == self._seen_position and self._asked.issuperset(ids):
            return {}
        self._seen_position, self._asked = position, set(ids)
        rows = OrderSummary.objects.filter(order_id__in=ids, status__in=FINAL_STATUSES)
        return {str(order_id): status for order_id, status in rows.values_list("order_id", "status")}

    def _skus(self, tag: str) -> list[str]:
        return [f"{tag}-SKU-{n:02d}" for n in range(self.SKUS)]
