"""A shop client for the Celery projection tests: dispatches commands, as a web process would.

Run as `python -m tests.celery_writers --seed N --commands M [--no-nudge]`
with the environment of the `worker_env` fixture (the test database and the
broker). Each command commits in its own transaction, and its commit nudges
the async projections through the broker, so the workers hear of it the way
they do in production. `--no-nudge` empties COMMIT_HOOKS: the events reach
the log, but nobody tells the workers.

Prints one JSON line: how many commands went through and how many the
domain or a lost race refused (those appended nothing).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import django

# SKUs every writer shares, so that writers race on the same Inventory streams.
SKUS = [f"SKU-CEL-{n}" for n in range(6)]


def run(seed: int, commands: int, pause: float) -> dict[str, int]:
    """Dispatch `commands` random shop commands: stock, orders, reservations, and order state changes."""
    from eventsourcing_app.commands import dispatch
    from eventsourcing_app.exceptions import CommandRejectedError, ConcurrencyError
    from project.shop.commands import (
        AddStock,
        CancelOrder,
        ConfirmOrder,
        PlaceOrder,
        ReleaseStock,
        ReserveStock,
        ShipOrder,
    )

    rng = random.Random(seed)
    orders: list[str] = []
    outcome = {"dispatched": 0, "refused": 0}
    for _ in range(commands):
        roll = rng.random()
        if roll < 0.35:
            command = AddStock(sku=rng.choice(SKUS), quantity=rng.randint(1, 9))
        elif roll < 0.65 or not orders:
            items = [
                {"sku": sku, "quantity": rng.randint(1, 3), "unit_price": f"{rng.randint(1, 9999) / 100:.2f}"}
                for sku in rng.sample(SKUS, rng.randint(1, 3))
            ]
            command = PlaceOrder(customer_id=f"customer-{seed}-{rng.randint(1, 5)}", items=items)
        else:
            order_id = rng.choice(orders)
            kind = rng.choice([ReserveStock, ReleaseStock, ConfirmOrder, CancelOrder, ShipOrder])
            command = kind(order_id=order_id)
        try:
            result = dispatch(command)
        except (CommandRejectedError, ConcurrencyError):
            outcome["refused"] += 1
            continue
        outcome["dispatched"] += 1
        if isinstance(command, PlaceOrder):
            orders.append(str(result.aggregate_id))
        time.sleep(pause)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--commands", type=int, default=40)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between commands, so writes trickle")
    parser.add_argument("--no-nudge", action="store_true", help="append without telling the projections")
    args = parser.parse_args()
    django.setup()
    from django.test import override_settings

    if args.no_nudge:
        with override_settings(EVENTSOURCING={**_eventsourcing_settings(), "COMMIT_HOOKS": []}):
            outcome = run(args.seed, args.commands, args.pause)
    else:
        outcome = run(args.seed, args.commands, args.pause)
    print(json.dumps(outcome), flush=True)


def _eventsourcing_settings() -> dict[str, object]:
    from django.conf import settings

    return dict(getattr(settings, "EVENTSOURCING", {}))


if __name__ == "__main__":
    main()
