"""Celery tasks of the app: one service call each (found by Celery's autodiscover_tasks)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.core.cache import cache as django_cache

from .conf import es_settings
from .models import Checkpoint, CheckpointStatus, IdempotencyRecord
from .projections import ASYNC, ProjectionRunner, projection_registry
from .projections.hooks import enqueue_projection, pending_key

logger = logging.getLogger("eventsourcing_app.projections")


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
    if (
        checkpoint.status == CheckpointStatus.RUNNING
        and not checkpoint.lease_owner
        and runner.store.head_position() > checkpoint.position
    ):
        enqueue_projection(name)
    return passed


@shared_task(name="eventsourcing_app.poll_projections", ignore_result=True)
def poll_projections() -> None:
    """Beat's safety net: queue a run of every async projection, in case a nudge was lost."""
    for projection in projection_registry.of_kind(ASYNC):
        enqueue_projection(projection.name)
