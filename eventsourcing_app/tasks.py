"""Celery tasks of the app: one service call each (found by Celery's autodiscover_tasks)."""

from __future__ import annotations

from celery import shared_task

from .models import IdempotencyRecord


@shared_task(name="eventsourcing_app.cleanup_idempotency_records")
def cleanup_idempotency_records() -> int:
    """Delete expired Idempotency-Key records; returns how many. Run it periodically (Celery beat)."""
    deleted, _ = IdempotencyRecord.objects.expired().delete()
    return deleted
