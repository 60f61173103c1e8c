"""Celery tasks of the app: one service call each (found by Celery's autodiscover_tasks)."""

from __future__ import annotations

import logging

from celery import current_task, shared_task
from django.core.cache import cache as django_cache

from .conf import es_settings
from .models import Checkpoint, CheckpointStatus, IdempotencyRecord
from .outbox.tasks import (  # noqa: F401  (registers the outbox tasks)
    cleanup_outbox,
    cleanup_processed_messages,
    process_outbox,
)
from .projections import ASYNC, ProjectionRunner, projection_registry
from .projections.hooks import enqueue_projection, pending_key
from .sagas import SagaManager, saga_registry
from .sagas import hooks as saga_hooks

logger = logging.getLogger("eventsourcing_app.projections")
# How soon a caught-up run looks again while committed events wait behind a writer still in flight.
HELD_BACK_RETRY_SECONDS = 0.1


@shared_task(name="eventsourcing_app.cleanup_idempotency_records")
def cleanup_idempotency_records() -> int:
    """Delete expired Idempotency-Key records; returns how many. Run it periodically (Celery beat)."""
    deleted, _ = IdempotencyRecord.objects.expired().delete()
    return deleted


@shared_task(name="eventsourcing_app.run_projection", ignore_result=True)
def run_projection(name: str) -> int:
    """Bring one async projection up to the head (for up to PROJECTION_TASK_SECONDS), then hand over.

    Nudged after each commit that appends events it wants, and by the beat poll.
    If time ran out before it caught up, it queues its own continuation.
    """
    django_cache.delete(pending_key(name))
    projection = projection_registry.get(name)
    if projection is None:
        logger.warning("run_projection: unknown projection %r", name)
        return 0
    runner = ProjectionRunner(projection)
    passed = runner.run(seconds=es_settings.PROJECTION_TASK_SECONDS)
    # Look again after the release: a run nudged while we held the lease found it taken and left the
    # events to us, though we may have read the head before they committed. Out of time, or free and
    # behind: queue a continuation. Held by another worker: that worker will look after its release.
    checkpoint = Checkpoint.objects.get(name=name)
    if (behind := _behind(runner, checkpoint)) is not None:
        enqueue_projection(name, countdown=behind)
    return passed


@shared_task(name="eventsourcing_app.poll_projections", ignore_result=True)
def poll_projections() -> None:
    """Beat's safety net: queue a run of every async projection, in case a nudge was lost."""
    for projection in projection_registry.of_kind(ASYNC):
        enqueue_projection(projection.name)


@shared_task(name="eventsourcing_app.run_saga", ignore_result=True)
def run_saga(name: str) -> int:
    """Move one saga's instances on from its checkpoint (for up to SAGA_TASK_SECONDS), then hand over.

    Nudged after each commit that appends events the saga handles (its own commands' events
    included), and by the beat poll; like run_projection, it re-queues itself when work is left.
    """
    django_cache.delete(saga_hooks.pending_key(name))
    if name not in saga_registry:
        logger.warning("run_saga: unknown saga %r", name)
        return 0
    manager = saga_registry.manager(name)
    runner = ProjectionRunner(manager)
    passed = runner.run(seconds=es_settings.SAGA_TASK_SECONDS)
    # Without beat (the embedded default), a deadline also fires the next time the saga runs.
    _fire_timeouts(manager)
    checkpoint = Checkpoint.objects.get(name=manager.name)
    if (behind := _behind(runner, checkpoint)) is not None:
        saga_hooks.enqueue_saga(name, countdown=behind)
    return passed


def _behind(runner: ProjectionRunner, checkpoint: Checkpoint) -> float | None:
    """After a run: None if nothing is left to this worker, else the delay to queue the next run after.

    Free and behind the head: at once. Caught up with the head, but with committed events past it
    (held back by a transaction still in flight, which may nudge nobody when it ends: it may append
    nothing this projection wants, or roll back): a little later, while that transaction lasts. Eager
    tasks (no broker) have no worker to come back later, and the next append or run looks again.
    """
    if checkpoint.status != CheckpointStatus.RUNNING or checkpoint.lease_owner:
        return None
    if runner.store.head_position() > checkpoint.position:
        return 0
    eager = getattr(getattr(current_task, "request", None), "is_eager", True)  # or called outside any task
    if not eager and runner.store.last_position() > checkpoint.position:
        return HELD_BACK_RETRY_SECONDS
    return None


@shared_task(name="eventsourcing_app.poll_sagas", ignore_result=True)
def poll_sagas() -> None:
    """Beat's safety net: queue a run of every saga, in case a nudge was lost."""
    for name in saga_registry.names():
        saga_hooks.enqueue_saga(name)


@shared_task(name="eventsourcing_app.fire_saga_timeouts", ignore_result=True)
def fire_saga_timeouts() -> int:
    """Beat: instances past their deadline run their saga's on_timeout (by default they compensate)."""
    return sum(_fire_timeouts(manager) for manager in saga_registry.managers())


def _fire_timeouts(manager: SagaManager) -> int:
    """One saga's due timeouts; a failing one is logged (and retried later) without stopping other sagas'."""
    try:
        return manager.fire_timeouts()
    except Exception:
        logger.exception("saga=%s: a timeout failed; it is tried again later (see its history)", manager.saga.name)
        return 0
