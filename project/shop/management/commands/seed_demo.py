"""Fill the demo with stock and a few orders, once: running it again adds nothing."""

from __future__ import annotations

import uuid
from decimal import Decimal
from functools import partial
from typing import Any

from django.core.management.base import BaseCommand

from eventsourcing_app.aggregates import Repository
from eventsourcing_app.commands import dispatch
from eventsourcing_app.testing import wait_until_caught_up
from project.shop.aggregates import Inventory, Order
from project.shop.commands import CancelOrder, ShipOrder
from project.shop.events import OrderLine

CATALOGUE = {"SKU-KETTLE": ("24.90", 40), "SKU-TEAPOT": ("39.00", 15), "SKU-MUG": ("6.50", 120)}
# Fixed ids, so a second run finds the demo orders and leaves them alone.
DEMO_NAMESPACE = uuid.UUID("8d1c6a0e-4f7b-4a53-9b1e-2f0c9d3e5a71")
DEMO_ORDERS = [
    ("alice", [("SKU-KETTLE", 1), ("SKU-MUG", 4)]),
    ("bob", [("SKU-TEAPOT", 2)]),
    ("carol", [("SKU-MUG", 2)]),
    ("dave", [("SKU-KETTLE", 2), ("SKU-TEAPOT", 1)]),
]
# What happens to a customer's order once the saga has confirmed it.
AFTER_CONFIRMATION = {"bob": ShipOrder, "carol": partial(CancelOrder, reason="customer changed their mind")}


class Command(BaseCommand):
    help = "Seed the demo shop with stock and sample orders (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        inventories, orders = Repository(Inventory), Repository(Order)
        for sku, (_, quantity) in CATALOGUE.items():
            if not inventories.exists(sku):
                inventory = Inventory(sku)
                inventory.add_stock(quantity)
                inventories.save(inventory)
        created = []
        for index, (customer, lines) in enumerate(DEMO_ORDERS):
            order_id = uuid.uuid5(DEMO_NAMESPACE, str(index))
            if orders.exists(order_id):
                continue
            items = [OrderLine(sku=sku, quantity=qty, unit_price=Decimal(CATALOGUE[sku][0])) for sku, qty in lines]
            orders.save(Order.place(order_id, customer, items))
            created.append((customer, order_id))
        if created:
            # The orders go the way every order goes: the fulfilment saga reserves, takes payment and
            # confirms them (run here, so the demo is ready whether or not workers are running).
            wait_until_caught_up(run=True)
            for customer, order_id in created:
                after = AFTER_CONFIRMATION.get(customer)
                if after is not None and orders.load(order_id).status == "confirmed":
                    dispatch(after(order_id=order_id))
            wait_until_caught_up(run=True)
        self.stdout.write(
            self.style.SUCCESS(f"Demo seeded: {len(CATALOGUE)} SKUs in stock, {len(created)} new orders.")
        )
