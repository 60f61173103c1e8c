"""What `manage.py benchmark` measures the example shop with: order events (catchup, rebuild) and orders (sagas)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from decimal import Decimal

from django.db import connection

from eventsourcing_app.commands import dispatch
from eventsourcing_app.models import Checkpoint
from eventsourcing_app.store import EventStore

from .commands import AddStock, PlaceOrder
from .events import OrderConfirmed, OrderLine, OrderPlaced
from .projections import ORDER_STATUS, OrderSummaryProjection

FINAL_STATUSES = ("confirmed", "cancelled")
# The events that give an order a final status in order_summary, and that status.
OUTCOMES = {event_type: status for event_type, status in ORDER_STATUS.items() if status in FINAL_STATUSES}
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
        self._position = 0  # order_summary's checkpoint when outcomes were last read
        self._outcomes: dict[str, str] = {}  # orders seen final and not reported yet

    def prepare(self, count: int, tag: str) -> None:
        """Untimed: stock for `count` orders (an order takes at most one unit of a SKU)."""
        for sku in self._skus(tag):
            dispatch(AddStock(sku=sku, quantity=count))
        self._position, self._outcomes = self._checkpoint(), {}

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

        Polled every few ms, so it must cost the system it measures next to nothing.
        `order_summary` commits its rows with its checkpoint, so the outcomes it shows
        are exactly the final-status events up to its checkpoint: one single-row read,
        and, when the checkpoint moved, a read of the log's new outcome events (a
        query over the run's pending order ids cost ~10 ms of database time per poll).
        """
        position = self._checkpoint()
        if position > self._position:
            outcomes = EventStore().read_all(
                after=self._position, until=position, event_types=list(OUTCOMES), categories=["Order"]
            )
            self._outcomes.update((str(event.data.order_id), OUTCOMES[event.event_type]) for event in outcomes)
            self._position = position
        return {order_id: self._outcomes.pop(order_id) for order_id in ids if order_id in self._outcomes}

    @staticmethod
    def _checkpoint() -> int:
        """order_summary's position, in plain SQL: it runs 200 times a second, and the ORM's query costs 5x as much."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT position FROM {Checkpoint._meta.db_table} WHERE name = %s", [OrderSummaryProjection.name]
            )
            row = cursor.fetchone()
        return row[0] if row else 0

    def _skus(self, tag: str) -> list[str]:
        return [f"{tag}-SKU-{n:02d}" for n in range(self.SKUS)]
