"""The app's settings: `settings.EVENTSOURCING` over `DEFAULTS`, read through `es_settings`.

Values are read when code runs, never at import, so `override_settings` and
pytest-django's `settings` fixture reach them (`setting_changed` reloads).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # Events per query when the global log is read in batches.
    "READ_BATCH_SIZE": 500,
    # Snapshot every N events, per aggregate category ({"Order": 100}); overrides
    # the aggregate class's `snapshot_every`.
    "SNAPSHOT_EVERY": {},
    # Callables `hook(recorded_events)` run inside the append's transaction, after the insert
    # (inline projections, outbox rows). A hook may have `wants(event_types) -> bool`.
    "APPEND_HOOKS": [
        "eventsourcing_app.projections.hooks.apply_inline_projections",
        "eventsourcing_app.outbox.hooks.write_outbox_messages",
    ],
    # Callables `hook(recorded_events)` run once the append has committed (nudges, live projections).
    "COMMIT_HOOKS": [
        "eventsourcing_app.projections.hooks.notify_live_projections",
        "eventsourcing_app.projections.hooks.nudge_async_projections",
        "eventsourcing_app.outbox.hooks.nudge_outbox_processor",
        "eventsourcing_app.sagas.hooks.nudge_sagas",
    ],
    # Object with encrypt(event_type, data, metadata) and decrypt(...) applied to event data.
    "FIELD_CIPHER": None,
    # Object with upcast(event_type, schema_version, data) -> (schema_version, data) applied on read.
    "UPCASTER": None,
    # The command bus's middleware, outermost first: import strings, or dicts
    # {"class": "...", "commands": ["PlaceOrder"], "options": {...}}.
    "COMMAND_MIDDLEWARE": [
        "eventsourcing_app.commands.middleware.recovery.RecoveryMiddleware",
        "eventsourcing_app.commands.middleware.log.LoggingMiddleware",
        "eventsourcing_app.commands.middleware.metrics.MetricsMiddleware",
        "eventsourcing_app.commands.middleware.correlation.CorrelationMiddleware",
        "eventsourcing_app.commands.middleware.tenant.TenantMiddleware",
        "eventsourcing_app.commands.middleware.validation.ValidationMiddleware",
        "eventsourcing_app.commands.middleware.retry.RetryMiddleware",
        "eventsourcing_app.commands.middleware.transaction.TransactionMiddleware",
        "eventsourcing_app.commands.middleware.timeout.TimeoutMiddleware",
        "eventsourcing_app.commands.middleware.idempotency.IdempotencyMiddleware",
    ],
    # Retries of a command that lost a concurrency race: attempts in all, first backoff (s).
    "COMMAND_RETRY": {"ATTEMPTS": 3, "BASE_DELAY": 0.01},
    # Seconds a command may take before it is rolled back (0 or None: no limit).
    "COMMAND_TIMEOUT": 30,
    # Seconds an Idempotency-Key's stored result is replayed.
    "IDEMPOTENCY_TTL": 24 * 3600,
    # Function user -> tenant id (or None); users with a tenant act and read only within it.
    "TENANT_RESOLVER": None,
    # Refuse commands that resolve no tenant.
    "TENANT_REQUIRED": False,
    # Request header naming the tenant, for users not bound to one.
    "TENANT_HEADER": "X-Tenant-ID",
    # Largest command body accepted over HTTP, in bytes (larger: 413).
    "MAX_COMMAND_BODY_BYTES": 1024 * 1024,
    # DRF throttle rate for command requests per user (e.g. "100/second"); None: no throttling.
    "COMMAND_THROTTLE_RATE": None,
    # Events an async projection applies per transaction.
    "PROJECTION_BATCH_SIZE": 500,
    # Events per transaction when a projection is rebuilt (larger: fewer round trips per event).
    "PROJECTION_REBUILD_BATCH_SIZE": 2000,
    # Seconds a worker's lease on a projection lasts without renewal (a dead worker's is taken over after it).
    "PROJECTION_LEASE_SECONDS": 30,
    # Seconds one Celery task keeps working on a projection before it hands over.
    "PROJECTION_TASK_SECONDS": 20,
    # Attempts at a batch that hits a transient database error, with exponential backoff.
    "PROJECTION_RETRIES": 5,
    # Events a saga manager handles per transaction (its commands commit with its checkpoint).
    "SAGA_BATCH_SIZE": 50,
    # Attempts at a failing compensating command before the saga is marked compensation_failed.
    "SAGA_COMPENSATION_ATTEMPTS": 3,
    # First pause (s) between those attempts; it doubles each time (capped at 2 s).
    "SAGA_COMPENSATION_BACKOFF": 0.05,
    # Seconds one Celery task keeps running a saga before it hands over.
    "SAGA_TASK_SECONDS": 20,
    # manage.py benchmark's catchup/rebuild: the projection measured, and a function
    # count -> iterable of (stream_id, [events]) making about `count` events it wants.
    "BENCHMARK_PROJECTION": None,
    "BENCHMARK_EVENTS": None,
    # manage.py benchmark's saga figures: a class with prepare(count, tag), start(tag, index) -> id
    # and finished(ids) -> {id: final status} (see docs/benchmarks.md).
    "BENCHMARK_SAGA": None,
    # Ordinary models whose creates/updates/deletes are recorded as events: "app_label.ModelName"
    # or {"model": ..., "fields": [...] or None, "exclude": [...]}.
    "OUTBOX_CAPTURE_MODELS": [],
    # Where outbox messages go: {name: {"PUBLISHER": import string, "OPTIONS": {...kwargs of its __init__}}}.
    "OUTBOX_DESTINATIONS": {},
    # Which events go where: [{"events": [types or globs], "destination": name,
    # "filter": import string or None, "transform": import string or None}].
    "OUTBOX_ROUTES": [],
    # Messages one processor claims, publishes and records per batch.
    "OUTBOX_BATCH_SIZE": 500,
    # Delivery attempts before a message becomes a dead letter.
    "OUTBOX_MAX_ATTEMPTS": 10,
    # Seconds before the first retry (doubled per attempt, with jitter), and the longest wait.
    "OUTBOX_RETRY_BASE_DELAY": 1.0,
    "OUTBOX_RETRY_MAX_DELAY": 300.0,
    # Seconds a claimed batch stays leased to its processor (a dead processor's messages are retaken after it).
    "OUTBOX_LEASE_SECONDS": 30,
    # Seconds one process_outbox Celery task keeps working before it hands over.
    "OUTBOX_TASK_SECONDS": 20,
    # Seconds delivered messages are kept before the cleanup_outbox task deletes them.
    "OUTBOX_RETENTION_SECONDS": 7 * 24 * 3600,
    # Seconds a consumer remembers a message id it handled (consume_once, the webhook receiver) before
    # the cleanup_processed_messages task forgets it: longer than a message can still be redelivered.
    "OUTBOX_CONSUMER_RETENTION_SECONDS": 30 * 24 * 3600,
}

# Keys whose values are import strings (or lists of them), resolved on first access.
IMPORT_STRINGS = frozenset(
    {
        "APPEND_HOOKS",
        "COMMIT_HOOKS",
        "FIELD_CIPHER",
        "UPCASTER",
        "TENANT_RESOLVER",
        "BENCHMARK_EVENTS",
        "BENCHMARK_SAGA",
    }
)


class ImportStringError(ImportError):
    """An import string in EVENTSOURCING could not be imported."""


def perform_import(value: Any, setting_name: str) -> Any:
    """Import a dotted path, or each of a list of them; other values pass through."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            imported = import_string(value)
        except ImportError as exc:
            raise ImportStringError(
                f"Could not import {value!r} for EVENTSOURCING setting {setting_name!r}: {exc}."
            ) from exc
        return imported() if isinstance(imported, type) else imported
    if isinstance(value, list | tuple):
        return [perform_import(item, setting_name) for item in value]
    return value


class EventSourcingSettings:
    """Attribute access to the EVENTSOURCING settings, with defaults and cached imports."""

    def __init__(self, defaults: dict[str, Any], import_strings: frozenset[str]) -> None:
        self.defaults = defaults
        self.import_strings = import_strings
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(settings, "EVENTSOURCING", {}) or {}

    def __getattr__(self, attr: str) -> Any:
        if attr not in self.defaults:
            raise AttributeError(f"Invalid EVENTSOURCING setting: {attr!r}")
        value = self.user_settings.get(attr, self.defaults[attr])
        if attr in self.import_strings:
            value = perform_import(value, attr)
        self._cached.add(attr)
        setattr(self, attr, value)
        return value

    def reload(self) -> None:
        for attr in self._cached:
            delattr(self, attr)
        self._cached.clear()


es_settings = EventSourcingSettings(DEFAULTS, IMPORT_STRINGS)


def _reload_es_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == "EVENTSOURCING":
        es_settings.reload()


setting_changed.connect(_reload_es_settings)
