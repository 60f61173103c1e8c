"""A receiver process for the consumer de-duplication race: `python -m tests.outbox_consumer_worker BARRIER IDS`.

Every worker gets the same message ids, as redeliveries racing each other would; for each it
runs `handle_once` with an effect (a Group row) that lingers inside the transaction to widen
the race, and prints how many ids it found "first" as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import django

from tests.workers import wait_for_go

CONSUMER = "tests.race"


def main(barrier: Path, message_ids: list[str]) -> None:
    django.setup()
    from django.contrib.auth.models import Group

    from eventsourcing_app.outbox.consumer import handle_once

    wait_for_go(barrier)
    firsts = 0
    for message_id in message_ids:
        with handle_once(message_id, consumer=CONSUMER) as first:
            if first:
                Group.objects.create(name=f"race-{message_id}")
                time.sleep(0.002)
                firsts += 1
    print(json.dumps({"firsts": firsts}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
