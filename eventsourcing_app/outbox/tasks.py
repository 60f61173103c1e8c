"""Celery tasks of the outbox (imported by eventsourcing_app.tasks, which Celery autodiscovers)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.core.cache import cache as django_cache

from ..conf import es_settings
from . import consumer
from .hooks import PENDING_KEY, enqueue_processing
from .operations import cleanup_delivered
from .processor import OutboxProcessor

logger = logging.getLogger("eventsourcing_app.outbox")


@shared_task(name="eventsourcing_app.process_outbox", ignore_result=True)
def process_outbox() -> int:
    """Publish due outbox messages for up to OUTBOX_TASK_SECONDS; returns how many were delivered.

    Nudged after each commit that wrote messages, and polled by beat (which also
    picks up retries whose backoff has passed). Any number may run at once. If
    time runs out with work maybe left, it queues its own continuation, so one
    task never hogs a worker.
    """
    django_cache.delete(PENDING_KEY)
    with OutboxProcessor() as processor:
        result = processor.run(seconds=float(es_settings.OUTBOX_TASK_SECONDS))
    for destination, error in result.broken_destinations.items():
        logger.error("process_outbox: destination %r is misconfigured, its messages wait: %s", destination, error)
    if result.out_of_time:
        enqueue_processing()
    return result.delivered


@shared_task(name="eventsourcing_app.cleanup_outbox", ignore_result=True)
def cleanup_outbox() -> int:
    """Delete messages delivered more than OUTBOX_RETENTION_SECONDS ago; returns how many (hourly, by beat)."""
    return cleanup_delivered()


@shared_task(name="eventsourcing_app.cleanup_processed_messages", ignore_result=True)
def cleanup_processed_messages() -> int:
    """Forget message ids consumers handled more than OUTBOX_CONSUMER_RETENTION_SECONDS ago (daily, by beat)."""
    return consumer.cleanup_processed_messages(
        older_than=timedelta(seconds=float(es_settings.OUTBOX_CONSUMER_RETENTION_SECONDS))
    )
