"""NatsJetStreamPublisher: JetStream publishes with acks, de-duplicated by message id.

Every message carries the header `Nats-Msg-Id: <message_id>`: within the stream's duplicate
window JetStream stores a redelivered message once and acks it as a duplicate, which counts
as delivered. nats-py is asyncio-only; the processor is not, so each publisher runs its own
event loop in a daemon thread, holding one connection (kept alive by that loop between
batches, reconnected by nats-py) until `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from django.core.exceptions import ImproperlyConfigured
from nats.aio.client import Client
from nats.js import JetStreamContext

from ...exceptions import PublishError
from ._urls import redact
from .base import OutgoingMessage, Publisher

logger = logging.getLogger(__name__)

T = TypeVar("T")


class NatsJetStreamPublisher(Publisher):
    """Publishes each message to `subject` and waits for JetStream's ack; a batch is sent at once.

    Args:
        servers: a nats:// URL or a list of them.
        subject: the subject; a JetStream stream must capture it (else nothing is stored and
            the publish fails with "no responders").
        stream: the stream expected to store the messages (`Nats-Expected-Stream`): when
            another stream captures the subject the publish is refused instead of misrouted.
        timeout: seconds to connect and to wait for each ack.
    """

    def __init__(
        self, *, servers: str | Sequence[str], subject: str, stream: str | None = None, timeout: float = 5.0
    ) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if not self.servers or not all(isinstance(s, str) and s for s in self.servers):
            raise ImproperlyConfigured(
                f"NatsJetStreamPublisher: servers must be a URL or a list of URLs, not {servers!r}."
            )
        if not isinstance(subject, str) or not subject or any(c in subject for c in " \t*>"):
            raise ImproperlyConfigured(
                f"NatsJetStreamPublisher: subject must be a subject without spaces or wildcards, not {subject!r}."
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ImproperlyConfigured(f"NatsJetStreamPublisher: timeout must be a positive number, not {timeout!r}.")
        self.subject = subject
        self.stream = stream
        self.timeout = float(timeout)
        self.shown = f"{', '.join(redact(s) for s in self.servers)} subject {subject!r}"
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nats-publisher-{subject}", daemon=True)
        self._thread.start()

    def publish(self, message: OutgoingMessage) -> None:
        if (error := self.publish_many([message])[0]) is not None:
            raise error

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Sends the whole batch, then awaits every ack together: one ack timeout for the batch."""
        if not messages:
            return []
        try:
            return self._call(self._publish_all(messages))
        except PublishError as exc:
            return [exc for _ in messages]

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self._disconnect())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=self.timeout)
            if not self._thread.is_alive():
                self._loop.close()

    # ------------------------------------------------------------ on the publisher's loop
    async def _publish_all(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        js = await self._jetstream()
        replies = await asyncio.gather(*(self._publish_one(js, m) for m in messages), return_exceptions=True)
        return [None if reply is None else self._error(reply) for reply in replies]

    async def _publish_one(self, js: JetStreamContext, message: OutgoingMessage) -> None:
        headers = {"Nats-Msg-Id": message.message_id, "Event-Type": message.event_type}
        await js.publish(self.subject, message.body_bytes(), timeout=self.timeout, stream=self.stream, headers=headers)

    async def _jetstream(self) -> JetStreamContext:
        if self._client is not None and self._js is not None and not self._client.is_closed:
            return self._js
        client = Client()
        try:
            # nats-py retries servers forever (so a live connection survives restarts); bound the first connect.
            await asyncio.wait_for(
                client.connect(
                    servers=self.servers,
                    name="eventsourcing-app outbox",
                    connect_timeout=max(1, round(self.timeout)),
                    max_reconnect_attempts=-1,
                    error_cb=self._on_error,
                ),
                self.timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            await _quietly_close(client)
            raise PublishError(f"Cannot connect to NATS at {self.shown}: {_describe(exc)}") from exc
        self._client, self._js = client, client.jetstream(timeout=self.timeout)
        return self._js

    async def _disconnect(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None:
            await _quietly_close(client)

    async def _on_error(self, error: Exception) -> None:
        logger.warning("NATS connection to %s: %s", self.shown, _describe(error))

    def _error(self, reply: BaseException) -> BaseException:
        if isinstance(reply, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
            return PublishError(f"No JetStream stream captures {self.shown} (no responders).")
        if isinstance(reply, TimeoutError):
            return PublishError(f"No JetStream ack from {self.shown} within {self.timeout:g}s.")
        if isinstance(reply, nats.errors.Error):
            return PublishError(f"JetStream publish to {self.shown} failed: {_describe(reply)}")
        return reply

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coroutine.close()
            raise PublishError("The NATS publisher is closed.")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            # Connect and acks are bounded by `timeout` each; the margin covers scheduling.
            return future.result(timeout=2 * self.timeout + 5)
        except TimeoutError:
            future.cancel()
            raise PublishError(f"NATS at {self.shown} did not answer in time.") from None


async def _quietly_close(client: Client) -> None:
    """Close a connection that may be half open; a failure to close leaves nothing to release."""
    try:
        await client.close()
    except (OSError, nats.errors.Error, asyncio.CancelledError) as exc:
        logger.debug("Closing a NATS connection: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
