"""Fill the demo with stock and a few orders, once: running it again adds nothing."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand

from eventsourcing_app.aggregates import Repository
from project.shop.aggregates import Inventory, Order
from project.shop.events import OrderLine

CATALOGUE = {"SKU-KETTLE": ("24.90", 40), "SKU-TEAPOT": ("39.00", 15), "SKU-MUG": ("6.50", 120)}
# Fixed ids, so a second run finds the demo orders and leaves them alone.
DEMO_NAMESPACE = uuid.UUID("8d1c6a0e-4f7b-4a53-9b1e-2f0c9d3e5a71")
DEMO_ORDERS = [
    ("alice", [("SKU-KETTLE", 1), ("SKU-MUG", 4)], "confirm"),
    ("bob", [("SKU-TEAPOT", 2)], "ship"),
    ("carol", [("SKU-MUG", 2)], "cancel"),
    ("dave", [("SKU-KETTLE", 2), ("SKU-TEAPOT", 1)], None),
]


class Command(BaseCommand):
    help = "Seed the demo shop with stock and sample orders (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        inventories, orders = Repository(Inventory), Repository(Order)
        for sku, (_, quantity) in CATALOGUE.items():
            if not inventories.exists(sku):
                inventory = Inventory(sku)
                inventory.add_stock(quantity)
                inventories.save(inventory)
        created = 0
        for index, (customer, lines, outcome) in enumerate(DEMO_ORDERS):
            order_id = uuid.uuid5(DEMO_NAMESPACE, str(index))
            if orders.exists(order_id):
                continue
            items = [OrderLine(sku=sku, quantity=qty, unit_price=Decimal(CATALOGUE[sku][0])) for sku, qty in lines]
            order = Order.place(order_id, customer, items)
            if outcome in ("confirm", "ship"):
                order.confirm()
            if outcome == "ship":
                order.ship()
            if outcome == "cancel":
                order.cancel("customer changed their mind")
            orders.save(order)
            created += 1
        self.stdout.write(self.style.SUCCESS(f"Demo seeded: {len(CATALOGUE)} SKUs in stock, {created} new orders."))
