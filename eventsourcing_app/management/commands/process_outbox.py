"""`manage.py process_outbox`: publish outbox messages without Celery, once or in a loop.

Any number of these (and of `process_outbox` Celery tasks) may run at once:
each claims its own batches under a lease. SIGTERM or SIGINT lets the batch in
flight finish (published and recorded, so it leaves no lease behind), closes
the publishers and exits 0. Database errors in the loop are logged and the
loop goes on after the interval, as run_projections does.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError, close_old_connections

from ...outbox import BatchResult, OutboxProcessor
from ._base import WorkerLoopCommand

logger = logging.getLogger("eventsourcing_app.outbox")


class Command(WorkerLoopCommand):
    help = (
        "Publish due outbox messages: with --once until none is due, else in a loop. "
        "SIGTERM/SIGINT finish the current batch and exit 0."
    )
    Processor = OutboxProcessor

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--once", action="store_true", help="Publish what is due now, then exit.")
        parser.add_argument(
            "--destination",
            action="append",
            dest="destinations",
            metavar="NAME",
            help="Only this destination of OUTBOX_DESTINATIONS (repeatable; default: all of them).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=None, help="Messages per batch (default: OUTBOX_BATCH_SIZE)."
        )
        parser.add_argument(
            "--interval", type=float, default=1.0, help="Seconds to sleep when nothing is due (default 1)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be a positive number.")
        if options["interval"] < 0:
            raise CommandError("--interval must be >= 0.")
        processor = self.Processor(destinations=options["destinations"], batch_size=options["batch_size"])
        if not processor.configured:
            raise CommandError("No outbox destinations are configured (EVENTSOURCING['OUTBOX_DESTINATIONS']).")
        with processor, self.stop_on_signals():
            if options["once"]:
                self._once(processor)
            else:
                self._loop(processor, interval=options["interval"], verbose=options["verbosity"] >= 2)

    def _once(self, processor: OutboxProcessor) -> None:
        try:
            result = processor.run(should_stop=lambda: self._stopping)
        except DatabaseError as exc:
            raise CommandError(f"Database error: {exc}") from exc
        self.stdout.write(_summary(result))
        if result.broken_destinations:
            raise CommandError(_broken(result))

    def _loop(self, processor: OutboxProcessor, *, interval: float, verbose: bool) -> None:
        names = ", ".join(sorted(processor.configured))
        self.stdout.write(f"Publishing to: {names} (polling every {interval} s when idle). Stop with Ctrl+C.")
        reported: set[str] = set()
        while not self._stopping:
            close_old_connections()
            try:
                result = processor.run(should_stop=lambda: self._stopping)
            except DatabaseError as exc:
                logger.exception("Database gave error: %r", exc)
            else:
                if result.claimed and verbose:
                    self.stdout.write(_summary(result))
                if new := set(result.broken_destinations) - reported:
                    reported |= new
                    self.stderr.write(_broken(result), self.style.ERROR)
            self.sleep(interval)
        self.stdout.write("Stopped.")


def _summary(result: BatchResult) -> str:
    return (
        f"Delivered {result.delivered}, failed {result.failed - result.dead} (will retry),"
        f" dead-lettered {result.dead}, in {result.batches} batch(es)."
    )


def _broken(result: BatchResult) -> str:
    return "\n".join(
        f"Destination {name!r} cannot be built, its messages wait: {error}"
        for name, error in sorted(result.broken_destinations.items())
    )
