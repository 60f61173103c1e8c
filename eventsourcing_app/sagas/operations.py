"""What operators do with sagas: see where each one stands, retry failed compensations, fire a timeout early.

These are the services behind `manage.py eventsourcing_status`, `manage.py
run_sagas` and the saga admin's actions. Acting on an instance follows the
manager's own rules: its row is locked (SELECT … FOR UPDATE on PostgreSQL;
SQLite's write transactions are exclusive), its status is checked again under
the lock, the manager's own compensation or step path runs, and the row is
written back only over the version it was read at. Each instance gets its own
transaction, so one that fails leaves the others done.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import connections, transaction
from django.db.models import Count
from django.utils import timezone

from ..models import Checkpoint, CheckpointStatus, SagaState, SagaStatus
from ..projections.operations import checkpoint_statuses
from ..store import EventStore
from .base import ACTIVE_STATUSES
from .hooks import enqueue_saga
from .manager import SagaManager, checkpoint_name, save_over
from .registry import saga_registry

__all__ = [
    "SagaReport",
    "fire_timeout_now",
    "instance_counts",
    "resume_saga",
    "retry_compensation",
    "saga_reports",
]


@dataclass(frozen=True)
class SagaReport:
    """One saga: where its manager stands in the log, and how many of its instances are in each status.

    `status`, `position`, `lag`, `last_error` and `failed_position` are the manager's
    checkpoint (`saga:<name>`), as for an async projection; `instances` has every
    SagaStatus value as a key, zeros included.
    """

    name: str
    checkpoint: str
    status: str
    position: int
    head: int
    lag: int
    last_error: str
    failed_position: int | None
    lease_owner: str
    updated_at: datetime | None
    instances: dict[str, int]


def saga_reports(store: EventStore | None = None) -> list[SagaReport]:
    """Every registered saga's report, by name: its manager's checkpoint status, and one grouped count."""
    store = store or EventStore()
    managers = saga_registry.managers()
    if not managers:
        return []
    counts = instance_counts(using=store.using)
    return [
        SagaReport(
            name=manager.saga.name,
            checkpoint=status.name,
            status=status.status,
            position=status.position,
            head=status.head,
            lag=status.lag,
            last_error=status.last_error,
            failed_position=status.failed_position,
            lease_owner=status.lease_owner,
            updated_at=status.updated_at,
            instances=counts.get(manager.saga.name, dict.fromkeys(SagaStatus.values, 0)),
        )
        for manager, status in zip(managers, checkpoint_statuses(managers, store), strict=True)  # type: ignore[arg-type]
    ]


def instance_counts(*, using: str = "default") -> dict[str, dict[str, int]]:
    """Instances per saga type and status ({saga type: {status: n}}, every status present), in one query."""
    counts: dict[str, dict[str, int]] = {}
    grouped = SagaState.objects.using(using).values_list("saga_type", "status").annotate(n=Count("pk")).order_by()
    for saga_type, status, n in grouped:
        counts.setdefault(saga_type, dict.fromkeys(SagaStatus.values, 0))[status] = n
    return counts


def resume_saga(name: str, *, store: EventStore | None = None) -> None:
    """Let a stopped (or paused) saga manager run again from its checkpoint, after the cause was fixed.

    The event it stopped at is handled first; the instances are as the last committed
    batch left them. A run is queued at once, rather than at the next append or poll.

    Raises:
        SagaNotFoundError: no saga is registered under this name.
    """
    saga_registry.lookup(name)
    using = (store or EventStore()).using
    Checkpoint.objects.using(using).filter(name=checkpoint_name(name)).update(
        status=CheckpointStatus.RUNNING, last_error="", failed_position=None, updated_at=timezone.now()
    )
    enqueue_saga(name)


def retry_compensation(state_ids: Iterable[int], *, actor: str = "", store: EventStore | None = None) -> int:
    """Run the compensations left of `compensation_failed` instances again (after the cause was fixed).

    The compensations still listed run newest first, with the saga's retries, as when
    the saga first failed; the saga's failure reason is restored as `last_error` first,
    so compensation methods that read it see what they saw the first time. An instance
    that fails again stays `compensation_failed` with the new error. Instances in any
    other status are left alone.

    Returns:
        How many instances were retried (not how many succeeded: their status says that).

    Raises:
        SagaNotFoundError: an instance's saga type is not registered (nothing is changed).
    """
    store = store or EventStore()
    retried = 0
    for state, manager in _locked_each(state_ids, (SagaStatus.COMPENSATION_FAILED,), store):
        version = state.version
        manager.retry_compensation(state, _failure_reason(state), by=actor)
        save_over(state, version, using=store.using)
        retried += 1
    return retried


def fire_timeout_now(state_ids: Iterable[int], *, actor: str = "", store: EventStore | None = None) -> int:
    """Fire the timeout of running instances that have a deadline, without waiting for it.

    The saga's `on_timeout` runs as it would at the deadline (by default: fail and
    compensate). Instances that are not running, or have no deadline, are left alone.

    Returns:
        How many timeouts fired.

    Raises:
        SagaNotFoundError: an instance's saga type is not registered (nothing is changed).
    """
    store = store or EventStore()
    fired = 0
    for state, manager in _locked_each(state_ids, ACTIVE_STATUSES, store, with_deadline=True):
        version = state.version
        manager.fire_timeout(state, by=actor, early=True)
        save_over(state, version, using=store.using)
        fired += 1
    return fired


def _locked_each(
    state_ids: Iterable[int], statuses: Iterable[str], store: EventStore, *, with_deadline: bool = False
) -> Iterator[tuple[SagaState, SagaManager]]:
    """Each instance still in one of `statuses`, locked, with its manager, inside its own transaction.

    The saga types are looked up before anything changes, so an unregistered one raises
    at once. A row that left the statuses before its lock was taken is skipped.
    """
    using = store.using
    rows = SagaState.objects.using(using).filter(pk__in=list(state_ids), status__in=list(statuses))
    if with_deadline:
        rows = rows.filter(deadline__isnull=False)
    targets = list(rows.order_by("pk").values_list("pk", "saga_type"))
    managers = {saga_type: saga_registry.manager(saga_type) for saga_type in {t for _, t in targets}}
    for pk, saga_type in targets:
        with transaction.atomic(using=using):
            locked = rows.filter(pk=pk)
            if connections[using].features.has_select_for_update:
                locked = locked.select_for_update()
            state = locked.first()
            if state is not None:
                yield state, managers[saga_type]


def _failure_reason(state: SagaState) -> str:
    """Why the saga failed, as its history recorded it (`last_error` now holds the compensation's error)."""
    for entry in reversed(state.history):
        if entry.get("kind") == "failed":
            return str(entry.get("reason") or "")
    return state.last_error
