"""Outbox processor processes for the concurrency and crash tests: `python -m tests.outbox_workers ...`.

The environment names the settings and the test database (the `worker_env`
fixture); the worker publishes to a RecordingPublisher writing to `--file`.
Workers meet at a barrier so that they start together, then run the processor
until the outbox has no pending message left (`--until-empty`) or nothing is
due, and print their totals as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import django
from django.conf import settings
from django.test import override_settings

from tests.workers import wait_for_go

# Seconds a worker waits at most for the outbox to empty with --until-empty.
EMPTY_TIMEOUT = 120.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.outbox_workers", description=__doc__.splitlines()[0])
    parser.add_argument("--barrier", type=Path, required=True, help="directory where workers meet before starting")
    parser.add_argument("--file", type=Path, required=True, help="where the RecordingPublisher records deliveries")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lease-seconds", type=float, default=30.0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds the publisher sleeps after each call")
    parser.add_argument("--message-delay", type=float, default=0.0, help="seconds the publisher takes per message")
    parser.add_argument("--until-empty", action="store_true", help="keep going until no message is pending")
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    from eventsourcing_app.models import OutboxMessage, OutboxStatus
    from eventsourcing_app.outbox import OutboxProcessor
    from tests.outbox_publishers import destination_config

    overrides = {
        **settings.EVENTSOURCING,
        "OUTBOX_DESTINATIONS": destination_config(args.file, delay=args.delay, message_delay=args.message_delay),
        "OUTBOX_ROUTES": [],
        "OUTBOX_LEASE_SECONDS": args.lease_seconds,
    }
    with override_settings(EVENTSOURCING=overrides), OutboxProcessor(batch_size=args.batch_size) as processor:
        wait_for_go(args.barrier)
        deadline = time.monotonic() + EMPTY_TIMEOUT
        total = processor.run()
        while args.until_empty and OutboxMessage.objects.filter(status=OutboxStatus.PENDING).exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"outbox worker {os.getpid()}: messages still pending after {EMPTY_TIMEOUT} s")
            time.sleep(0.01)
            total.add(processor.run())
    return {"pid": os.getpid(), "claimed": total.claimed, "delivered": total.delivered, "batches": total.batches}


def main(argv: list[str] | None = None) -> None:
    """Set Django up from the environment, run the processor and print its totals as JSON."""
    args = _parser().parse_args(argv)
    django.setup()
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
