"""What operators do with projections: status, resume, retry dead letters, rebuild."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.db import connections, transaction
from django.db.models import Count
from django.utils import timezone

from ..conf import es_settings
from ..models import Checkpoint, CheckpointStatus, ProjectionDeadLetter
from ..store import EventStore
from .base import ASYNC, Projection
from .hooks import enqueue_projection
from .registry import projection_registry
from .runner import ProjectionRunner, worker_id


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int
    lag: int
    status: str
    last_error: str
    failed_position: int | None
    dead_letters: int
    lease_owner: str
    updated_at: datetime | None


def projection_statuses(store: EventStore | None = None, *, sagas: bool = False) -> list[ProjectionStatus]:
    """Every async projection's position, lag (events it wants after its position), state and last error.

    With `sagas=True`, the saga managers' checkpoints (named `saga:<Saga>`) too, listed first.
    """
    runnables: list = saga_managers() if sagas else []
    return checkpoint_statuses([*runnables, *projection_registry.of_kind(ASYNC)], store)


def checkpoint_statuses(runnables: list[Projection], store: EventStore | None = None) -> list[ProjectionStatus]:
    """Each of these async projections' (or saga managers') status, in order: two queries and a count each."""
    store = store or EventStore()
    head = store.head_position()
    names = [runnable.name for runnable in runnables]
    checkpoints = {c.name: c for c in Checkpoint.objects.using(store.using).filter(name__in=names)}
    dead = dict(
        ProjectionDeadLetter.objects.using(store.using)
        .filter(projection__in=names, retried_at__isnull=True)
        .values("projection")
        .annotate(n=Count("pk"))
        .values_list("projection", "n")
    )
    statuses = []
    for projection in runnables:
        checkpoint = checkpoints.get(projection.name) or Checkpoint(name=projection.name)
        statuses.append(
            ProjectionStatus(
                name=projection.name,
                position=checkpoint.position,
                head=head,
                lag=pending_events(projection, checkpoint.position, store),
                status=checkpoint.status,
                last_error=checkpoint.last_error,
                failed_position=checkpoint.failed_position,
                dead_letters=dead.get(projection.name, 0),
                lease_owner=checkpoint.lease_owner,
                updated_at=checkpoint.updated_at,
            )
        )
    return statuses


def saga_managers() -> list:
    """The saga managers, which run like async projections (imported late: sagas build on projections)."""
    from ..sagas import saga_registry

    return saga_registry.managers()


def runnable(name: str) -> Projection:
    """The async projection or saga manager a checkpoint name belongs to."""
    from ..sagas import checkpoint_name, saga_registry

    for saga_name in saga_registry.names():
        if checkpoint_name(saga_name) == name:
            return saga_registry.manager(saga_name)  # type: ignore[return-value]
    return projection_registry.lookup(name)


def pending_events(projection: Projection, position: int, store: EventStore) -> int:
    """How many events the projection wants after `position`: its lag (small lags count fast, on an index)."""
    sql, params = store.matching_events_sql(
        after=position,
        event_types=list(projection.event_types) or None,
        categories=list(projection.categories) or None,
    )
    with connections[store.using].cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM ({sql}) AS pending", params)
        return cursor.fetchone()[0]


def resume(name: str) -> None:
    """Let a failed or paused projection (or saga manager, `saga:<Name>`) run again from its checkpoint."""
    runnable(name)
    Checkpoint.objects.filter(name=name).update(
        status=CheckpointStatus.RUNNING, last_error="", failed_position=None, updated_at=timezone.now()
    )


def pause(name: str) -> None:
    """Stop a projection (or saga manager) at its checkpoint until it is resumed."""
    runnable(name)
    Checkpoint.objects.get_or_create(name=name)
    Checkpoint.objects.filter(name=name).update(status=CheckpointStatus.PAUSED, updated_at=timezone.now())


def retry_dead_letters(name: str, store: EventStore | None = None) -> tuple[int, int]:
    """Apply a skip-policy projection's dead-lettered events again; returns (applied, still failing)."""
    store = store or EventStore()
    projection = projection_registry.lookup(name)
    applied = failing = 0
    letters = ProjectionDeadLetter.objects.using(store.using)
    for letter in letters.filter(projection=name, retried_at__isnull=True):
        (event,) = store.read_all(after=letter.position - 1, limit=1, until=letter.position)  # committed already
        try:
            with transaction.atomic(using=store.using):
                projection.handle_batch([event])
                letters.filter(pk=letter.pk).update(retried_at=timezone.now())
            applied += 1
        except Exception as exc:
            letters.filter(pk=letter.pk).update(error=repr(exc)[:4000])
            failing += 1
    return applied, failing


def rebuild(
    name: str,
    *,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    store: EventStore | None = None,
) -> int:
    """Clear a projection's read model and replay the whole log into it; returns positions replayed.

    Runners leave it alone while its checkpoint says "rebuilding" (a runner
    caught mid-batch fails its guarded advance and rolls back). Writers may
    keep appending: the replay goes up to the head as it was when the rebuild
    started, then the projection runs normally again from there (a run is
    enqueued for the rest). `progress(done, total)` is called per batch.
    """
    store = store or EventStore()
    projection = projection_registry.lookup(name)
    batch_size = batch_size or es_settings.PROJECTION_REBUILD_BATCH_SIZE
    runner = ProjectionRunner(projection, owner=f"rebuild:{worker_id()}", store=store, batch_size=batch_size)
    runner.statuses = (CheckpointStatus.REBUILDING,)
    Checkpoint.objects.using(store.using).get_or_create(name=name)
    with transaction.atomic(using=store.using):
        Checkpoint.objects.using(store.using).filter(name=name).update(
            status=CheckpointStatus.REBUILDING,
            position=0,
            last_error="",
            failed_position=None,
            lease_owner=runner.owner,
            lease_expires_at=runner._expiry(timezone.now()),
        )
        ProjectionDeadLetter.objects.using(store.using).filter(projection=name).delete()
        projection.clear()
    # The replay stops at the head it started from; later events are the normal runners' (enqueued
    # below). Chasing a head that busy writers keep moving could otherwise go on for ever.
    target = store.head_position()
    done = 0
    try:
        while done < target:
            step = runner.run_batch()
            if not step:
                break
            done += step
            if progress:
                progress(done, target)
    finally:
        Checkpoint.objects.using(store.using).filter(name=name, lease_owner=runner.owner).update(
            status=CheckpointStatus.RUNNING, lease_owner="", lease_expires_at=None, updated_at=timezone.now()
        )
    enqueue_projection(name)  # events appended since the replay's last batch
    return done
