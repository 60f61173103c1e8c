"""A ledger projection whose double application cannot hide, and worker processes that write and run it.

The ledger keeps, per projection name, one `OrderSummary` row per event (its
primary key derived from the event id, so applying an event twice fails on
the unique key) and a counter row in `InventoryLevel` (events applied and
the sum of their amounts, so a double that slipped past would show in the
totals). `expected_ledger()` folds the log from scratch to compare with.

Run as `python -m tests.projection_workers MODE ...` against the test database
(the environment comes from the `worker_env` fixture); each worker prints its
result as one JSON line on stdout:

- `append --count N --barrier DIR`: append ticks to a few streams of its own,
  one to three per transaction, some transactions rolled back on purpose.
- `run NAME`: run a ProjectionRunner on a projection of this module (or a
  registered one) until it has caught up. `ledger-stalling` announces its third
  batch on stdout and then sleeps inside that batch's transaction: a worker to
  kill mid-batch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import django

if __name__ == "__main__":  # a worker process: the models below need the app registry
    django.setup()

from django.core.cache import cache
from django.db import transaction
from django.db.models import F

from eventsourcing_app.projections import Projection, ProjectionRunner, projection_registry
from eventsourcing_app.projections.hooks import pending_key
from eventsourcing_app.store import EventStore, NewEvent, RecordedEvent
from project.shop.models import InventoryLevel, OrderSummary
from tests.workers import wait_for_go

TICK = "LedgerTick"
CATEGORY = "Ledger"
# How long the stalling worker sleeps inside its transaction: far longer than any test waits for it.
STALL_SECONDS = 300.0


class DeliberateRollback(Exception):
    """Raised inside a writer's transaction so that its append rolls back (and leaves a hole in positions)."""


def tick(amount: int = 1, *, poison: bool = False) -> NewEvent:
    """One ledger event; `poison` marks the events the tests' failing projections choke on."""
    return NewEvent(TICK, {"amount": amount, "poison": poison})


def counter_sku(name: str) -> str:
    return f"ledger:{name}"


def row_id(name: str, event_id: uuid.UUID) -> uuid.UUID:
    """The primary key of the row a projection writes for an event: one per (projection, event)."""
    return uuid.uuid5(event_id, name)


def reset_ledger(name: str) -> None:
    """An empty ledger for projection `name` (its counter row exists, at zero; no event rows)."""
    InventoryLevel.objects.update_or_create(sku=counter_sku(name), defaults={"available": 0, "reserved": 0})
    OrderSummary.objects.filter(customer_id=name).delete()


def apply_ledger(name: str, events: Sequence[RecordedEvent], *, unique_rows: bool = True) -> None:
    """Apply events to projection `name`'s ledger: a few queries whatever the number of events."""
    if not events:
        return
    if unique_rows:
        OrderSummary.objects.bulk_create(
            OrderSummary(
                order_id=row_id(name, event.event_id),
                customer_id=name,
                status="tick",
                total=Decimal(event.data["amount"]),
                items=[],
                placed_at=event.recorded_at,
                updated_at=event.recorded_at,
            )
            for event in events
        )
    updated = InventoryLevel.objects.filter(sku=counter_sku(name)).update(
        available=F("available") + len(events), reserved=F("reserved") + sum(e.data["amount"] for e in events)
    )
    if updated != 1:
        raise RuntimeError(f"The ledger of {name!r} has no counter row: call reset_ledger() first.")


@dataclass(frozen=True)
class LedgerState:
    """What a ledger holds: the row ids written, how many events were applied and their total amount."""

    row_ids: frozenset[uuid.UUID]
    applied: int
    amount: int


def ledger_state(name: str) -> LedgerState:
    counter = InventoryLevel.objects.get(sku=counter_sku(name))
    rows = frozenset(OrderSummary.objects.filter(customer_id=name).values_list("order_id", flat=True))
    return LedgerState(row_ids=rows, applied=counter.available, amount=counter.reserved)


def expected_ledger(
    name: str, *, unique_rows: bool = True, wanted: Iterable[RecordedEvent] | None = None
) -> LedgerState:
    """The ledger a from-scratch fold of the log gives (all ledger ticks, or the events given)."""
    events = list(EventStore().iter_all(event_types=[TICK], categories=[CATEGORY]) if wanted is None else wanted)
    return LedgerState(
        row_ids=frozenset(row_id(name, e.event_id) for e in events) if unique_rows else frozenset(),
        applied=len(events),
        amount=sum(e.data["amount"] for e in events),
    )


class LedgerProjection(Projection):
    """The ledger in batch mode: one bulk insert and one counter update per batch."""

    name = "ledger"
    event_types = (TICK,)
    categories = (CATEGORY,)
    unique_rows = True

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        apply_ledger(self.name, events, unique_rows=self.unique_rows)

    def clear(self) -> None:
        reset_ledger(self.name)


class StallingLedgerProjection(LedgerProjection):
    """The ledger, but its third batch says so on stdout and then sleeps inside its transaction."""

    name = "ledger"
    stall_at_batch = 3

    def __init__(self) -> None:
        self.batches = 0

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        super().handle_batch(events)
        self.batches += 1
        if self.batches == self.stall_at_batch:
            print(json.dumps({"stalled": True, "first": events[0].position, "last": events[-1].position}), flush=True)
            time.sleep(STALL_SECONDS)


WORKER_PROJECTIONS: dict[str, type[Projection]] = {
    "ledger": LedgerProjection,
    "ledger-stalling": StallingLedgerProjection,
}


def append_ticks(count: int, seed: int) -> dict[str, Any]:
    """Append `count` ticks to streams of this worker, 1-3 per transaction; every 5th transaction rolls back.

    Returns the ids of the events that committed and of those rolled back.
    """
    rng = random.Random(seed)
    store = EventStore()
    streams = [f"{CATEGORY}-{os.getpid()}-{n}" for n in range(3)]
    committed: list[str] = []
    rolled_back: list[str] = []
    transactions = 0
    while len(committed) < count:
        events = [tick(rng.randint(1, 9)) for _ in range(min(rng.randint(1, 3), count - len(committed)))]
        ids = [str(event.event_id) for event in events]
        transactions += 1
        try:
            with transaction.atomic():
                store.append(rng.choice(streams), events)
                if transactions % 5 == 0:
                    raise DeliberateRollback
        except DeliberateRollback:
            rolled_back += ids
        else:
            committed += ids
    return {"committed": committed, "rolled_back": rolled_back}


@contextmanager
def registered(*projections: Projection) -> Iterator[None]:
    """Register projections for the block (as an app's projections.py would), then unregister them."""
    for projection in projections:
        projection_registry.register(projection.name, projection)
    try:
        yield
    finally:
        for projection in projections:
            projection_registry.unregister(projection.name)
            cache.delete(pending_key(projection.name))


def run_projection(name: str, *, batch_size: int | None, owner: str | None) -> dict[str, Any]:
    """Run a runner on projection `name` until it has caught up (or another worker holds it)."""
    projection_class = WORKER_PROJECTIONS.get(name)
    projection = projection_class() if projection_class else projection_registry.lookup(name)
    runner = ProjectionRunner(projection, owner=owner, batch_size=batch_size)
    print(json.dumps({"owner": runner.owner}), flush=True)
    return {"passed": runner.run()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.projection_workers", description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    append = modes.add_parser("append", help="append ledger ticks")
    append.add_argument("--count", type=int, required=True)
    append.add_argument("--seed", type=int, default=0)
    append.add_argument("--barrier", type=Path, required=True, help="directory where workers meet before starting")
    run = modes.add_parser("run", help="run a projection until it has caught up")
    run.add_argument("name")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--owner")
    return parser


def main(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    if args.mode == "append":
        wait_for_go(args.barrier)
        result = append_ticks(args.count, args.seed)
    else:
        result = run_projection(args.name, batch_size=args.batch_size, owner=args.owner)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
