"""A test-only outbox publisher whose deliveries every process can see, and helpers to read them back.

`RecordingPublisher` appends one JSON line per delivered message to a file
opened with O_APPEND and writes each `publish_many` call's lines with a single
write(), so lines from processors in different processes never interleave and
the file's order is the order in which deliveries happened: the receiver's view.
It can also fail on purpose (by attempt number or event type) and dawdle after
each call, so that a test can kill a processor in the middle of a batch, or take
`message_delay` seconds per message, sending them one at a time as the webhook,
Celery and RabbitMQ publishers do (each line is then written when its message
arrives).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventsourcing_app.exceptions import PublishError
from eventsourcing_app.outbox.publishers import OutgoingMessage, Publisher
from eventsourcing_app.outbox.publishers._batch import publish_each

DESTINATION = "recorder"


class RecordingPublisher(Publisher):
    """Records deliveries in `path`; fails attempts up to `fail_attempts` and every message of `fail_event_types`."""

    def __init__(
        self,
        *,
        path: str,
        fail_attempts: int = 0,
        fail_event_types: Sequence[str] = (),
        delay: float = 0.0,
        message_delay: float = 0.0,
    ) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.fail_attempts = fail_attempts
        self.fail_event_types = set(fail_event_types)
        self.delay = delay
        self.message_delay = message_delay

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        call = uuid.uuid4().hex
        if self.message_delay:
            return publish_each(lambda message: self._send_slowly(message, call), messages, unreachable=lambda _: False)
        results: list[BaseException | None] = []
        lines = []
        for message in messages:
            if message.attempt <= self.fail_attempts or message.event_type in self.fail_event_types:
                results.append(PublishError(f"refused {message.event_type} on attempt {message.attempt}"))
                continue
            lines.append(
                json.dumps({**message.body(), "stream_id": message.stream_id, "call": call, "pid": os.getpid()})
            )
            results.append(None)
        if lines:
            os.write(self.fd, ("\n".join(lines) + "\n").encode())
        if self.delay:
            time.sleep(self.delay)
        return results

    def _send_slowly(self, message: OutgoingMessage, call: str) -> None:
        time.sleep(self.message_delay)
        if message.attempt <= self.fail_attempts or message.event_type in self.fail_event_types:
            raise PublishError(f"refused {message.event_type} on attempt {message.attempt}")
        line = {**message.body(), "stream_id": message.stream_id, "call": call, "pid": os.getpid()}
        os.write(self.fd, (json.dumps(line) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def destination_config(path: Path, **options: Any) -> dict[str, Any]:
    """OUTBOX_DESTINATIONS with one RecordingPublisher destination writing to `path`."""
    return {
        DESTINATION: {
            "PUBLISHER": "tests.outbox_publishers.RecordingPublisher",
            "OPTIONS": {"path": str(path), **options},
        }
    }


def deliveries(path: Path) -> list[dict[str, Any]]:
    """Every delivery recorded in `path`, in the order they happened."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def delivered_ids(path: Path) -> list[str]:
    return [delivery["message_id"] for delivery in deliveries(path)]
