"""The async projection runner: lease, read a batch, apply it and advance the checkpoint in one transaction.

Exactly once: the read-model writes and the checkpoint's advance commit
together, and the advance only matches while this worker holds the lease and
the checkpoint is where it read from. A worker that dies mid-batch leaves
nothing behind (its transaction rolls back) and its lease runs out; one that
stalls past its lease finds the checkpoint moved and rolls its batch back.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connections, transaction
from django.utils import timezone

from ..conf import es_settings
from ..exceptions import LeaseLostError
from ..models import Checkpoint, CheckpointStatus, ProjectionDeadLetter
from ..store import EventStore, RecordedEvent
from ..store.cursors import statement_cursor
from .base import SKIP, Projection

logger = logging.getLogger("eventsourcing_app.projections")

CHECKPOINT_TABLE = "eventsourcing_checkpoint"
TRANSIENT_ERRORS = (OperationalError, InterfaceError)


def worker_id() -> str:
    """This process's name as a lease owner: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ProjectionRunner:
    """Runs one async projection from its checkpoint. Any number may run, on any machines."""

    def __init__(
        self,
        projection: Projection,
        *,
        owner: str | None = None,
        store: EventStore | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.projection = projection
        self._batch_size = batch_size
        self.owner = owner or worker_id()
        self.store = store or EventStore()
        self.using = self.store.using
        self.statuses = (CheckpointStatus.RUNNING,)
        self._checkpoint_exists = False
        # The position this runner's last committed batch advanced to, and when that renewed its lease:
        # while the lease is fresh, the next batch starts there without taking the lease again (its
        # advance re-checks owner, position and status), which saves a commit per batch.
        self._held: tuple[int, float] | None = None
        # What a failed batch is retried after (with backoff), rather than searched for a poison event.
        self.transient_errors = (*TRANSIENT_ERRORS, *getattr(projection, "transient_errors", ()))

    @property
    def batch_size(self) -> int:
        return self._batch_size or self.projection.batch_size or es_settings.PROJECTION_BATCH_SIZE

    def run(self, *, seconds: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Apply batches until caught up, out of time, leased elsewhere or told to stop.

        Returns the number of log positions passed. The lease is released at the end.
        """
        deadline = None if seconds is None else time.monotonic() + seconds
        passed = 0
        try:
            while not should_stop():
                step = self.run_batch()
                if not step:
                    break
                passed += step
                if deadline is not None and time.monotonic() > deadline:
                    break
        finally:
            self.release()
        return passed

    def run_batch(self) -> int | None:
        """One batch: positions passed, 0 when caught up, None when another worker holds it or it stopped."""
        for attempt in range(1, es_settings.PROJECTION_RETRIES + 1):
            try:
                return self._run_batch()
            except self.transient_errors as exc:
                self._held = None
                logger.warning("projection=%s transient error (attempt %s): %s", self.name, attempt, exc)
                if isinstance(exc, TRANSIENT_ERRORS):
                    close_old_connections()  # a broken connection is replaced
                time.sleep(min(0.05 * 2**attempt, 2.0))
        return self._run_batch(one_by_one=True)

    @property
    def name(self) -> str:
        return self.projection.name

    def _run_batch(self, *, one_by_one: bool = False) -> int | None:
        position = held = self._held_position()
        if position is None:
            position = self._acquire()
        if position is None:
            return None
        head = self.store.head_position()
        if position >= head:
            return 0
        events = self.store.read_all(
            after=position,
            limit=self.batch_size,
            until=head,
            event_types=list(self.projection.event_types) or None,
            categories=list(self.projection.categories) or None,
        )
        end = events[-1].position if len(events) == self.batch_size else head
        wanted = [e for e in events if self.projection.wants(e.event_type, e.category)]
        if one_by_one:
            return self._apply_one_by_one(position, wanted, end)
        try:
            self._apply(position, wanted, end)
        except LeaseLostError:
            # Another worker ran it meanwhile (our lease had expired) or an operator reset it:
            # take the lease afresh, from wherever the checkpoint is now.
            return None if held is None else self._run_batch(one_by_one=one_by_one)
        except self.transient_errors:
            raise
        except Exception:
            return self._apply_one_by_one(position, wanted, end)
        return end - position

    def _held_position(self) -> int | None:
        if self._held is None:
            return None
        position, renewed = self._held
        if time.monotonic() - renewed > es_settings.PROJECTION_LEASE_SECONDS / 2:
            return None
        return position

    def _apply(self, position: int, events: list[RecordedEvent], end: int) -> None:
        # The checkpoint is advanced (and so row-locked) before the read model is written: a rebuild,
        # which resets the checkpoint and then clears the read model, takes its locks in that same
        # order, so the two wait for each other instead of deadlocking.
        self._held = None
        with transaction.atomic(using=self.using):
            renewed = time.monotonic()
            self._advance(position, end)
            if events:
                self.projection.handle_batch(events)
        self._held = (end, renewed)

    def _apply_one_by_one(self, position: int, events: list[RecordedEvent], end: int) -> int | None:
        """Find the poison event of a failed batch: apply event by event, then follow the policy."""
        start = position
        for event in events:
            try:
                self._apply(position, [event], event.position)
            except LeaseLostError:
                return None
            except Exception as exc:
                if self.projection.on_error != SKIP:
                    self._fail(event, exc)
                    return None
                try:
                    self._dead_letter(position, event, exc)
                except LeaseLostError:
                    return None
            position = event.position
        try:
            self._apply(position, [], end)
        except LeaseLostError:
            return None
        return end - start

    def _dead_letter(self, position: int, event: RecordedEvent, error: Exception) -> None:
        logger.error("projection=%s skipped event position=%s: %r", self.name, event.position, error)
        self._held = None
        with transaction.atomic(using=self.using):
            self._advance(position, event.position)  # first: only the lease holder records the dead letter
            ProjectionDeadLetter.objects.using(self.using).create(
                projection=self.name,
                position=event.position,
                event_id=event.event_id,
                event_type=event.event_type,
                error=_describe(error),
            )

    def _fail(self, event: RecordedEvent, error: Exception) -> None:
        logger.error("projection=%s stopped at position=%s: %r", self.name, event.position, error)
        self._held = None
        Checkpoint.objects.using(self.using).filter(name=self.name, lease_owner=self.owner).update(
            status=CheckpointStatus.FAILED,
            last_error=_describe(error),
            failed_position=event.position,
            lease_owner="",
            lease_expires_at=None,
            updated_at=timezone.now(),
        )

    # ---------------------------------------------------------------- checkpoint and lease
    def _acquire(self) -> int | None:
        """Take or renew the lease; the checkpoint's position, or None if it is not ours to run."""
        if not self._checkpoint_exists:
            Checkpoint.objects.using(self.using).get_or_create(name=self.name)
            self._checkpoint_exists = True
        now = timezone.now()
        connection = connections[self.using]
        statuses = ", ".join(["%s"] * len(self.statuses))
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {CHECKPOINT_TABLE} SET lease_owner = %s, lease_expires_at = %s"
                f" WHERE name = %s AND status IN ({statuses})"
                " AND (lease_owner = '' OR lease_owner = %s OR lease_expires_at < %s) RETURNING position",
                [
                    self.owner,
                    connection.ops.adapt_datetimefield_value(self._expiry(now)),
                    self.name,
                    *self.statuses,
                    self.owner,
                    connection.ops.adapt_datetimefield_value(now),
                ],
            )
            row = cursor.fetchone()
        if row is None:
            return None
        self._held = (row[0], time.monotonic())
        return row[0]

    def _advance(self, position: int, end: int) -> None:
        """Move the checkpoint from `position` to `end`, only while we hold the lease; else LeaseLostError.

        One prepared statement: it runs for every batch (the ORM's update cost more to compile than to run).
        """
        now = timezone.now()
        connection = connections[self.using]
        adapt = connection.ops.adapt_datetimefield_value
        statuses = ", ".join(["%s"] * len(self.statuses))
        with statement_cursor(connection) as cursor:
            cursor.execute(
                f"UPDATE {CHECKPOINT_TABLE} SET position = %s, lease_expires_at = %s, updated_at = %s"
                f" WHERE name = %s AND lease_owner = %s AND position = %s AND status IN ({statuses})",
                [end, adapt(self._expiry(now)), adapt(now), self.name, self.owner, position, *self.statuses],
            )
            updated = cursor.rowcount
        if updated != 1:
            raise LeaseLostError(f"Projection {self.name!r}: the lease moved to another worker.")

    def release(self) -> None:
        self._held = None
        try:
            Checkpoint.objects.using(self.using).filter(name=self.name, lease_owner=self.owner).update(
                lease_owner="", lease_expires_at=None
            )
        except DatabaseError:
            logger.warning("projection=%s could not release its lease; it expires by itself", self.name)

    def _expiry(self, now) -> object:
        return now + timedelta(seconds=es_settings.PROJECTION_LEASE_SECONDS)


def _describe(error: Exception) -> str:
    return "".join(traceback.format_exception_only(type(error), error)).strip()[:4000]
