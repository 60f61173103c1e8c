"""What a publisher receives and the small base class every publisher derives from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from ._batch import publish_each


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One outbox message on its way out.

    `message_id` is the same on every attempt and every processor, so a
    receiver that remembers the ids it has handled gets an exactly-once effect
    from at-least-once delivery.
    """

    message_id: str
    destination: str
    event_type: str
    stream_id: str
    position: int
    event_id: str
    payload: dict[str, Any]
    attempt: int = 1

    def body(self) -> dict[str, Any]:
        """The JSON document sent: the event (as the route shaped it) and the message id beside it."""
        return {"message_id": self.message_id, "destination": self.destination, "event": self.payload}

    def body_bytes(self) -> bytes:
        return json.dumps(self.body(), cls=DjangoJSONEncoder, separators=(",", ":")).encode()


class Publisher:
    """Sends outbox messages to one destination. Subclass it and implement `publish`.

    A publisher is built once per processor run from its destination's OPTIONS
    (`Publisher(**options)`) and closed at the end. Raising from `publish` means
    "not delivered": the message is retried with backoff, then dead-lettered.
    """

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} takes no options, got {sorted(options)}.")

    def publish(self, message: OutgoingMessage) -> None:
        """Deliver one message or raise."""
        raise NotImplementedError(f"{type(self).__name__} must implement publish().")

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Deliver a batch; one result per message, in order: None when delivered, else the error.

        Override to batch (pipelines, publisher confirms); the default publishes one by one,
        and starts none once the processor's deadline for the call has passed (see `_batch`).
        """
        return publish_each(self.publish, messages, unreachable=lambda _: False)

    def close(self) -> None:
        """Release connections; called once when the processor is done with the publisher."""
