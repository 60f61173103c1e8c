"""What operators do with the outbox (the admin's actions call these): retry, requeue, discard, stats, cleanup.

Each action is one bulk UPDATE over the chosen rows and returns how many rows
it changed; rows in another state are left alone (retrying a delivered
message does nothing). Actions that make messages due queue a processor run
once they commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Count, Min, QuerySet
from django.utils import timezone

from ..conf import es_settings
from ..models import OutboxMessage, OutboxStatus
from .hooks import enqueue_processing

Selection = QuerySet[OutboxMessage] | Iterable[int]


def _rows(selection: Selection) -> QuerySet[OutboxMessage]:
    """The chosen messages: a queryset of them, or their primary keys."""
    if isinstance(selection, QuerySet):
        if selection.model is not OutboxMessage:
            raise TypeError(f"Expected a queryset of OutboxMessage, got one of {selection.model.__name__}.")
        return selection
    return OutboxMessage.objects.filter(pk__in=list(selection))


def _nudge_on_commit(changed: int) -> None:
    if changed:
        transaction.on_commit(enqueue_processing, robust=True)


def retry_now(selection: Selection) -> int:
    """Make pending messages due at once (skipping the rest of their backoff); returns how many.

    A message whose stream has an earlier undelivered message still waits for it.
    """
    changed = _rows(selection).filter(status=OutboxStatus.PENDING).update(available_at=timezone.now())
    _nudge_on_commit(changed)
    return changed


def requeue_dead(selection: Selection) -> int:
    """Give dead letters a fresh set of attempts, due at once; returns how many.

    Later messages of their streams were not held back by them (dead letters do not
    block), so a requeued message reaches its receiver after them: out of order.
    The last error is kept until the next attempt.
    """
    changed = (
        _rows(selection)
        .filter(status=OutboxStatus.DEAD)
        .update(
            status=OutboxStatus.PENDING,
            attempts=0,
            available_at=timezone.now(),
            lease_owner="",
            lease_expires_at=None,
        )
    )
    _nudge_on_commit(changed)
    return changed


def discard(selection: Selection) -> int:
    """Give up on pending or dead messages: they are never sent (again); returns how many.

    A message a processor is publishing at this moment may still arrive, but it
    stays discarded: outcomes are only recorded on pending messages. Discarded
    messages no longer hold their stream's later messages back.
    """
    return (
        _rows(selection)
        .filter(status__in=(OutboxStatus.PENDING, OutboxStatus.DEAD))
        .update(status=OutboxStatus.DISCARDED, lease_owner="", lease_expires_at=None)
    )


def cleanup_delivered(*, older_than: float | None = None) -> int:
    """Delete delivered messages delivered more than `older_than` seconds ago (OUTBOX_RETENTION_SECONDS).

    Dead and discarded messages are kept: they are for an operator to look at.
    """
    seconds = float(es_settings.OUTBOX_RETENTION_SECONDS if older_than is None else older_than)
    cutoff = timezone.now() - timedelta(seconds=seconds)
    deleted, _ = OutboxMessage.objects.filter(status=OutboxStatus.DELIVERED, delivered_at__lt=cutoff).delete()
    return deleted


@dataclass(frozen=True)
class DestinationStats:
    """One destination's messages by status, and how long its oldest undelivered one has waited."""

    destination: str
    configured: bool
    pending: int = 0
    delivered: int = 0
    dead: int = 0
    discarded: int = 0
    oldest_pending_at: datetime | None = None

    @property
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest pending message was written (None when nothing is pending)."""
        if self.oldest_pending_at is None:
            return None
        return max(0.0, (timezone.now() - self.oldest_pending_at).total_seconds())


@dataclass(frozen=True)
class OutboxStats:
    """The whole outbox: per destination (configured ones, and any that still has rows) and totals."""

    destinations: list[DestinationStats]

    def total(self, status: str) -> int:
        return sum(getattr(stats, status) for stats in self.destinations)

    @property
    def oldest_pending_at(self) -> datetime | None:
        return min((s.oldest_pending_at for s in self.destinations if s.oldest_pending_at), default=None)

    @property
    def oldest_pending_age(self) -> float | None:
        oldest = self.oldest_pending_at
        return None if oldest is None else max(0.0, (timezone.now() - oldest).total_seconds())


def outbox_stats() -> OutboxStats:
    """Counts by destination and status, and the oldest pending message, in one query."""
    configured = es_settings.OUTBOX_DESTINATIONS
    names = set(configured) if isinstance(configured, dict) else set()
    counts: dict[str, dict[str, object]] = {name: {} for name in names}
    rows = (
        OutboxMessage.objects.values("destination", "status")
        .annotate(count=Count("pk"), oldest=Min("created_at"))
        .order_by()
    )
    for row in rows:
        found = counts.setdefault(row["destination"], {})
        found[row["status"]] = row["count"]
        if row["status"] == OutboxStatus.PENDING:
            found["oldest_pending_at"] = row["oldest"]
    return OutboxStats(
        destinations=[
            DestinationStats(destination=name, configured=name in names, **counts[name])  # type: ignore[arg-type]
            for name in sorted(counts)
        ]
    )
