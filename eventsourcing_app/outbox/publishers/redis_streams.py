"""RedisStreamsPublisher: XADD each message to a Redis stream.

Each entry has the fields `message_id`, `event_type` and `body` (the JSON of
`OutgoingMessage.body()`). Redis stream ids are assigned by the server and cannot carry our
message id, so consumers (XREADGROUP) de-duplicate by the `message_id` field.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from django.core.exceptions import ImproperlyConfigured

from ...exceptions import PublishError
from ._urls import redact
from .base import OutgoingMessage, Publisher


class RedisStreamsPublisher(Publisher):
    """Appends messages to the stream `stream`; a batch is one pipeline, so one round trip.

    Args:
        url: a redis:// (or rediss://, unix://) URL.
        stream: the stream's key.
        maxlen: trim the stream to about this many entries (XADD MAXLEN ~); None keeps everything.
        timeout: seconds to connect and to wait for a reply.
    """

    def __init__(self, *, url: str, stream: str, maxlen: int | None = None, timeout: float = 5.0) -> None:
        if not isinstance(stream, str) or not stream:
            raise ImproperlyConfigured("RedisStreamsPublisher: stream must be a non-empty key.")
        if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1):
            raise ImproperlyConfigured(
                f"RedisStreamsPublisher: maxlen must be a positive integer or None, not {maxlen!r}."
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ImproperlyConfigured(f"RedisStreamsPublisher: timeout must be a positive number, not {timeout!r}.")
        try:
            self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        except ValueError as exc:
            raise ImproperlyConfigured(f"RedisStreamsPublisher: bad url {redact(url)!r}: {exc}") from None
        self.stream = stream
        self.maxlen = maxlen
        self.shown = f"{redact(url)} stream {stream!r}"

    def publish(self, message: OutgoingMessage) -> None:
        try:
            self.client.xadd(self.stream, _fields(message), maxlen=self.maxlen, approximate=True)
        except redis.RedisError as exc:
            raise PublishError(f"XADD to {self.shown} failed: {exc}") from exc

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """One pipeline (not a transaction) for the batch: an entry that Redis refuses fails alone."""
        if not messages:
            return []
        pipeline = self.client.pipeline(transaction=False)
        for message in messages:
            pipeline.xadd(self.stream, _fields(message), maxlen=self.maxlen, approximate=True)
        try:
            replies = pipeline.execute(raise_on_error=False)
        except redis.RedisError as exc:
            # The connection failed mid-batch: some entries may be in, none is confirmed; retrying
            # them is what at-least-once means.
            return [PublishError(f"XADD to {self.shown} failed: {exc}") for _ in messages]
        return [
            PublishError(f"XADD to {self.shown} failed: {reply}") if isinstance(reply, BaseException) else None
            for reply in replies
        ]

    def close(self) -> None:
        self.client.close()


def _fields(message: OutgoingMessage) -> dict[str, str | bytes]:
    return {"message_id": message.message_id, "event_type": message.event_type, "body": message.body_bytes()}
