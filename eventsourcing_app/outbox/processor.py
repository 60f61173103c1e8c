"""The outbox processor: claim a batch under a lease, publish it outside any transaction, record the outcomes.

Delivery is at least once. A batch is claimed in one statement that leases its
messages to this processor (`lease_owner`, `lease_expires_at`) and commits at
once; publishing then runs with no transaction or lock held, and the outcomes
are recorded in a few bulk UPDATEs, each guarded by `lease_owner`, so a
processor that lost its lease (it stalled past OUTBOX_LEASE_SECONDS and
another took over) changes nothing. A processor that dies leaves its leases
to expire; the messages are then claimed again, so nothing is lost, and a
message whose delivery the dead processor did not record is sent again, under
the same `message_id`, which receivers de-duplicate by. While the lease holds,
no other processor takes the message: with no crash and no stall, a message is
sent exactly once.

Keeping the lease while publishing. A batch can take far longer than the lease
(500 webhooks of 100 ms each), so the processor keeps it as it goes, timed from
the start of the claim or renewal statement (a conservative reading of when the
lease began): before each `publish_many` call, once a quarter of the lease has
passed, it renews the lease of every message of the batch not given back yet
(sent but unrecorded ones included, so that none is claimed again before it is
recorded). No message is started once half the lease has passed since then:
`publish_each` (the webhook, Celery, RabbitMQ and default publishers) stops
there and answers `NotSent` for the rest, which go out after the renewal; the
other half is the margin for the message in flight, so one message's send
(timeouts included) must take well under half of OUTBOX_LEASE_SECONDS. Calls are
sized from the time the destination's messages have been taking, to last at most
a quarter of the lease: a slow publisher gets small calls, a fast one (a Redis
pipeline) whole rounds in one call. When the renewal finds a message no longer
ours (a stall past the lease, an operator's discard) or fails, the processor
stops publishing the batch, gives the rest back unsent and records what it did.

Order per stream and destination. A message is claimed only together with
every earlier message (lower id) of the same stream to the same destination
that is still pending, so it is never sent while one of those is in backoff
after a failure or out with another processor. Within a batch,
a stream's messages are published in rounds (each `publish_many` call holds at
most one message per stream, so a publisher may send a call's messages in any
order or in parallel), and once one fails, its stream's later messages are
released untried. A receiver thus sees a stream's messages in order (counting
first deliveries; a redelivery after a crash repeats messages it already had).
The trade-offs: one failing message holds its stream back for the length of its
backoff; a stream's throughput is one message per round; and a stream's backlog
waits for its head, so several processors only help with many streams.

Dead letters do not block. When a message uses up OUTBOX_MAX_ATTEMPTS it becomes
a dead letter and the later messages of its stream flow again, so one poison
message cannot stop a stream for good; the receiver sees a gap (the default
payload's `version` shows it). An operator who requeues the dead letter gets it
delivered late, out of order. Discarded messages do not block either.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections, router
from django.utils import timezone

from ..conf import es_settings
from ..exceptions import OutboxConfigurationError, PublishError
from ..models import OutboxMessage
from ..projections.runner import worker_id
from . import metrics, statements
from .publishers._batch import NotSent, sending_until
from .publishers.base import OutgoingMessage, Publisher
from .routes import Destination, destinations

logger = logging.getLogger("eventsourcing_app.outbox")

# Longest error text kept in `last_error`.
ERROR_LIMIT = 4000
# Errors building a publisher that no retry can cure: its destination is skipped for the rest of the run.
CONFIGURATION_ERRORS = (ImproperlyConfigured, TypeError, ValueError)
# Shares of OUTBOX_LEASE_SECONDS, counted from the start of the last claim or renewal: the lease is renewed
# before a publish call once RENEW_AFTER of it has passed; a call is sized to last at most CALL_SHARE of it;
# no message is started once SEND_WITHIN of it has passed (the rest is the margin for the message in flight).
RENEW_AFTER = 0.25
CALL_SHARE = 0.25
SEND_WITHIN = 0.5
_decoder = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A message leased to this processor, as read by the claim."""

    id: int
    message_id: str
    destination: str
    event_type: str
    stream_id: str
    position: int
    event_id: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime

    def outgoing(self) -> OutgoingMessage:
        return OutgoingMessage(
            message_id=self.message_id,
            destination=self.destination,
            event_type=self.event_type,
            stream_id=self.stream_id,
            position=self.position,
            event_id=self.event_id,
            payload=self.payload,
            attempt=self.attempts + 1,
        )


@dataclass(slots=True)
class BatchResult:
    """What one batch (or, summed, a whole run) did. `dead` failures are also counted in `failed`."""

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    batches: int = 0
    out_of_time: bool = False
    broken_destinations: dict[str, str] = field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        self.claimed += other.claimed
        self.delivered += other.delivered
        self.failed += other.failed
        self.dead += other.dead
        self.released += other.released
        self.batches += other.batches


@dataclass(slots=True)
class _Outcomes:
    delivered: list[ClaimedMessage] = field(default_factory=list)
    failed: list[tuple[ClaimedMessage, BaseException]] = field(default_factory=list)
    released: list[ClaimedMessage] = field(default_factory=list)


def backoff_delay(attempt: int) -> float:
    """Seconds before retrying after failed attempt number `attempt` (1-based).

    Exponential (OUTBOX_RETRY_BASE_DELAY doubled per attempt, capped at
    OUTBOX_RETRY_MAX_DELAY) with "equal jitter": a random point in the upper half
    of that delay, so retries of many messages that failed together spread out,
    yet none comes back sooner than half the planned wait.
    """
    base, cap = float(es_settings.OUTBOX_RETRY_BASE_DELAY), float(es_settings.OUTBOX_RETRY_MAX_DELAY)
    delay = min(cap, base * 2.0 ** min(max(0, attempt - 1), 64))  # the exponent is capped: no float overflow
    return delay / 2 + random.uniform(0, delay / 2)


class OutboxProcessor:
    """Publishes due outbox messages; any number may run at once, on any machines.

    Publishers are built from OUTBOX_DESTINATIONS on first use and kept for the
    processor's life; `close()` (or leaving a `with` block) closes them.

    Args:
        destinations: only these destinations (default: every configured one).
        batch_size: messages per claim (default OUTBOX_BATCH_SIZE).
        owner: the lease owner's name (default: host, pid and a random part).
        using: the database alias (default: where OutboxMessage is routed for writes).

    Raises:
        OutboxConfigurationError: OUTBOX_DESTINATIONS is invalid or names no such destination.
    """

    def __init__(
        self,
        *,
        destinations: Sequence[str] | None = None,
        batch_size: int | None = None,
        owner: str | None = None,
        using: str | None = None,
    ) -> None:
        self.configured = _chosen_destinations(destinations)
        self.batch_size = int(es_settings.OUTBOX_BATCH_SIZE) if batch_size is None else batch_size
        if self.batch_size < 1:
            raise ValueError("batch_size must be a positive number.")
        self.owner = owner or worker_id()
        self.using = using or router.db_for_write(OutboxMessage)
        self.broken: dict[str, str] = {}
        self._publishers: dict[str, Publisher] = {}
        # time.monotonic() when the last claim or renewal started: the lease runs from no earlier than that.
        self._leased_at = 0.0
        # Per destination, seconds one message has been taking (how publish calls are sized).
        self._pace: dict[str, float] = {}

    # ---------------------------------------------------------------- running
    def run(self, *, seconds: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> BatchResult:
        """Process batches until nothing is claimable, `seconds` have passed, or `should_stop()`.

        `out_of_time` in the result says the run stopped on time with work maybe left.
        """
        deadline = None if seconds is None else time.monotonic() + seconds
        total = BatchResult()
        while not should_stop():
            batch = self.process_batch()
            total.add(batch)
            if not batch.claimed:
                break
            if deadline is not None and time.monotonic() > deadline:
                total.out_of_time = True
                break
        total.broken_destinations = dict(self.broken)
        return total

    def process_batch(self) -> BatchResult:
        """Claim one batch, publish it, record the outcomes; what happened (claimed 0: nothing due)."""
        return self.deliver(self.claim())

    def deliver(self, claimed: list[ClaimedMessage]) -> BatchResult:
        """Publish messages this processor claimed and record the outcomes.

        Messages whose lease was lost meanwhile (this processor stalled past it and
        another took them) are neither sent nor recorded.
        """
        if not claimed:
            return BatchResult()
        outcomes = self._publish(claimed)
        return self._record(len(claimed), outcomes)

    # ---------------------------------------------------------------- claiming
    def claim(self) -> list[ClaimedMessage]:
        """Lease up to `batch_size` claimable messages to this processor (one statement, committed at once)."""
        names = [name for name in self.configured if name not in self.broken]
        if not names:
            return []
        connection = connections[self.using]
        started = time.monotonic()  # before the expiry is computed: the lease ends no later than started + lease
        now = timezone.now()
        adapt = connection.ops.adapt_datetimefield_value
        sql, params = statements.claim(
            connection.vendor,
            owner=self.owner,
            now=adapt(now),
            expires=adapt(self._lease_expiry(now)),
            limit=self.batch_size,
            destinations=names,
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        self._leased_at = started
        return sorted((_claimed(row) for row in rows), key=lambda message: message.id)

    @staticmethod
    def _lease_seconds() -> float:
        return float(es_settings.OUTBOX_LEASE_SECONDS)

    def _lease_expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self._lease_seconds())

    # ---------------------------------------------------------------- publishing
    def _publish(self, claimed: list[ClaimedMessage]) -> _Outcomes:
        outcomes = _Outcomes()
        by_destination: dict[str, list[ClaimedMessage]] = defaultdict(list)
        for message in claimed:
            by_destination[message.destination].append(message)
        stopped = False
        for destination, messages in by_destination.items():
            if stopped:  # the lease could not be kept: the rest goes back unsent
                outcomes.released.extend(messages)
                continue
            publisher = self._publisher(destination, messages, outcomes)
            if publisher is not None:
                stopped = not self._publish_in_rounds(publisher, messages, claimed, outcomes)
        return outcomes

    def _publisher(self, destination: str, messages: list[ClaimedMessage], outcomes: _Outcomes) -> Publisher | None:
        """The destination's publisher, built on first use; None (messages accounted for) if it cannot be built."""
        publisher = self._publishers.get(destination)
        if publisher is not None:
            return publisher
        try:
            publisher = self.configured[destination].build()
        except CONFIGURATION_ERRORS as exc:
            # No retry can cure this: keep the messages pending for a fixed configuration.
            logger.error("outbox destination %r cannot be built, skipped: %s", destination, exc)
            self.broken[destination] = _describe(exc)
            outcomes.released.extend(messages)
            return None
        except Exception as exc:  # e.g. the broker is down at connect: a failed attempt, retried with backoff
            logger.warning("outbox destination %r: publisher failed to start: %s", destination, exc)
            outcomes.failed.extend((message, exc) for message in messages)
            return None
        self._publishers[destination] = publisher
        return publisher

    def _publish_in_rounds(
        self, publisher: Publisher, messages: list[ClaimedMessage], claimed: list[ClaimedMessage], outcomes: _Outcomes
    ) -> bool:
        """Publish one destination's messages, one per stream per call; False if the lease could not be kept.

        A round (each stream's next message) goes out in as many calls as the lease needs; a
        message a call left unsent for lack of time is sent after the renewal, still before
        its stream's next one.
        """
        destination = messages[0].destination
        queues: dict[str, deque[ClaimedMessage]] = defaultdict(deque)
        for message in messages:
            queues[message.stream_id].append(message)
        round_: deque[ClaimedMessage] = deque()
        while round_ or queues:
            if not round_:
                round_ = deque(queue.popleft() for queue in queues.values())
                queues = {stream: queue for stream, queue in queues.items() if queue}
            if not self._keep_lease(claimed, outcomes):
                outcomes.released.extend(round_)
                outcomes.released.extend(message for queue in queues.values() for message in queue)
                return False
            call = [round_.popleft() for _ in range(min(len(round_), self._call_size(destination)))]
            unsent = []
            for message, result in zip(call, self._send(publisher, call), strict=True):
                if result is None:
                    outcomes.delivered.append(message)
                elif isinstance(result, NotSent):
                    unsent.append(message)
                else:
                    outcomes.failed.append((message, result))
                    outcomes.released.extend(queues.pop(message.stream_id, ()))
            round_.extendleft(reversed(unsent))
        return True

    def _call_size(self, destination: str) -> int:
        """Messages for the next call: what the destination's pace fits in CALL_SHARE of the lease.

        Before the first call there is no pace yet: the whole round goes, bounded by the
        deadline for publishers that send one message at a time.
        """
        pace = self._pace.get(destination)
        if pace is None:
            return self.batch_size
        return max(1, int(self._lease_seconds() * CALL_SHARE / pace))

    def _send(self, publisher: Publisher, messages: list[ClaimedMessage]) -> list[BaseException | None]:
        """publish_many under this lease's deadline, with a publisher that raises (or miscounts) failing the call."""
        lease = self._lease_seconds()
        deadline = self._leased_at + lease * SEND_WITHIN
        started = time.monotonic()
        try:
            with sending_until(deadline):
                results = list(publisher.publish_many([message.outgoing() for message in messages]))
        except Exception as exc:
            results = [exc] * len(messages)
        ended = time.monotonic()
        name = type(publisher).__name__
        if len(results) != len(messages):
            error = PublishError(f"{name}.publish_many() returned {len(results)} results for {len(messages)} messages.")
            results = [error] * len(messages)
        if ended < deadline and any(isinstance(result, NotSent) for result in results):
            # NotSent is only for the deadline: taken at its word before it, no call would ever finish a round.
            error = PublishError(f"{name}.publish_many() answered NotSent before the deadline.")
            results = [error if isinstance(result, NotSent) else result for result in results]
        if ended > self._leased_at + lease:
            logger.warning(
                "outbox: a %s call took %.1f s and ended past the lease (OUTBOX_LEASE_SECONDS %g): another processor"
                " may have sent its messages too; lower the publisher's timeout or raise the lease",
                name,
                ended - started,
                lease,
            )
        tried = sum(not isinstance(result, NotSent) for result in results)
        if tried:
            self._note_pace(messages[0].destination, (ended - started) / tried)
        return results

    def _note_pace(self, destination: str, seconds: float) -> None:
        """Follow a slowdown at once, a speed-up by halves: a call too big could outlast its share of the lease."""
        seconds = max(seconds, 1e-6)
        previous = self._pace.get(destination)
        self._pace[destination] = seconds if previous is None or seconds >= previous else (previous + seconds) / 2

    def _keep_lease(self, claimed: list[ClaimedMessage], outcomes: _Outcomes) -> bool:
        """Renew the lease of the batch once RENEW_AFTER of it has passed; False when publishing must stop.

        Every message not given back is renewed, the sent-but-unrecorded ones too: their
        rows are pending until the batch is recorded, and must not be claimed again before.
        Publishing stops when a message is no longer ours (this processor stalled past its
        lease and another took over, or an operator discarded it), when the renewal fails,
        or when it took so long that a quarter of the lease went by meanwhile.
        """
        lease = self._lease_seconds()
        if time.monotonic() - self._leased_at < lease * RENEW_AFTER:
            return True
        given_back = {message.id for message in outcomes.released}
        ids = [message.id for message in claimed if message.id not in given_back]
        if not ids:
            return True
        started = time.monotonic()
        connection = connections[self.using]
        expiry = connection.ops.adapt_datetimefield_value(self._lease_expiry(timezone.now()))
        try:
            with connection.cursor() as cursor:
                cursor.execute(*statements.renew(ids, owner=self.owner, expires=expiry))
                still_ours = len(cursor.fetchall())
        except DatabaseError as exc:
            logger.warning("outbox processor %s could not renew its lease, stopping its batch: %s", self.owner, exc)
            return False
        if still_ours < len(ids):
            lost = len(ids) - still_ours
            logger.warning("outbox processor %s lost the lease of %d messages, stopping its batch", self.owner, lost)
            return False
        self._leased_at = started
        if time.monotonic() - started >= lease * RENEW_AFTER:
            logger.warning("outbox processor %s: renewing its lease took too long, stopping its batch", self.owner)
            return False
        return True

    # ---------------------------------------------------------------- recording
    def _record(self, claimed: int, outcomes: _Outcomes) -> BatchResult:
        result = BatchResult(claimed=claimed, batches=1)
        connection = connections[self.using]
        now = timezone.now()
        with connection.cursor() as cursor:
            if outcomes.delivered:
                result.delivered = self._record_delivered(cursor, outcomes.delivered, now)
            if outcomes.failed:
                result.failed, result.dead = self._record_failed(cursor, outcomes.failed, now)
            if outcomes.released:
                cursor.execute(*statements.release([m.id for m in outcomes.released], owner=self.owner))
                result.released = cursor.rowcount  # those whose lease another processor took stay its own
        return result

    def _record_delivered(self, cursor: Any, delivered: list[ClaimedMessage], now: datetime) -> int:
        stamp = connections[self.using].ops.adapt_datetimefield_value(now)
        cursor.execute(*statements.mark_delivered([m.id for m in delivered], owner=self.owner, now=stamp))
        recorded = {row[0] for row in cursor.fetchall()}
        for message in delivered:
            if message.id in recorded:
                metrics.DELIVERED.labels(message.destination).inc()
                metrics.LATENCY.labels(message.destination).observe(
                    max(0.0, (now - message.created_at).total_seconds())
                )
        return len(recorded)

    def _record_failed(
        self, cursor: Any, failed: list[tuple[ClaimedMessage, BaseException]], now: datetime
    ) -> tuple[int, int]:
        adapt = connections[self.using].ops.adapt_datetimefield_value
        rows = [
            (message.id, adapt(now + timedelta(seconds=backoff_delay(message.attempts + 1))), _describe(error))
            for message, error in failed
        ]
        max_attempts = int(es_settings.OUTBOX_MAX_ATTEMPTS)
        cursor.execute(*statements.mark_failed(rows, owner=self.owner, max_attempts=max_attempts))
        statuses = dict(cursor.fetchall())
        dead = 0
        retried: dict[str, list[BaseException]] = defaultdict(list)
        for message, error in failed:
            status = statuses.get(message.id)
            if status is None:
                continue  # the lease moved on: the new holder records this message
            metrics.FAILED.labels(message.destination).inc()
            if status != statements.DEAD:
                retried[message.destination].append(error)
                continue
            dead += 1
            metrics.DEAD_LETTERED.labels(message.destination).inc()
            logger.error(
                "outbox message %s (%s → %s) is a dead letter after %d attempts: %s",
                message.message_id,
                message.event_type,
                message.destination,
                message.attempts + 1,
                error,
            )
        for destination, errors in retried.items():
            logger.warning(
                "outbox: %d message(s) to %r failed and will be retried (first error: %s)",
                len(errors),
                destination,
                errors[0],
            )
        return len(statuses), dead

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close every publisher built by this processor; a failing close is logged, not raised."""
        publishers, self._publishers = self._publishers, {}
        for name, publisher in publishers.items():
            try:
                publisher.close()
            except Exception:
                logger.exception("outbox destination %r: closing its publisher failed", name)

    def __enter__(self) -> OutboxProcessor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _chosen_destinations(names: Sequence[str] | None) -> dict[str, Destination]:
    configured = destinations()
    if not names:
        return configured
    unknown = [name for name in names if name not in configured]
    if unknown:
        raise OutboxConfigurationError(
            f"Unknown outbox destination(s) {', '.join(map(repr, unknown))}."
            f" Configured: {', '.join(map(repr, sorted(configured))) or 'none'}."
        )
    return {name: configured[name] for name in dict.fromkeys(names)}


def _claimed(row: tuple) -> ClaimedMessage:
    row_id, message_id, destination, event_type, stream_id, position, event_id, payload, attempts, created_at = row
    return ClaimedMessage(
        id=row_id,
        message_id=str(message_id if isinstance(message_id, uuid.UUID) else uuid.UUID(message_id)),
        destination=destination,
        event_type=event_type,
        stream_id=stream_id,
        position=position,
        event_id=str(event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id)),
        payload=payload if isinstance(payload, dict) else _decoder.decode(payload),
        attempts=attempts,
        created_at=_aware(created_at),
    )


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _describe(error: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip()[:ERROR_LIMIT]
