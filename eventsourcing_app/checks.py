"""System checks for the EVENTSOURCING setting: unknown keys, bad values, bad import strings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.checks import CheckMessage, Error, register
from django.utils.module_loading import import_string

from .conf import DEFAULTS, IMPORT_STRINGS, ImportStringError, perform_import


@register()
def eventsourcing_settings_check(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    user = getattr(settings, "EVENTSOURCING", {}) or {}
    if not isinstance(user, dict):
        return [Error("EVENTSOURCING must be a dict.", id="eventsourcing_app.E001")]
    errors = [
        Error(
            f"Unknown EVENTSOURCING key {key!r}.",
            hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
            id="eventsourcing_app.E001",
        )
        for key in sorted(set(user) - set(DEFAULTS))
    ]
    for key in sorted(IMPORT_STRINGS & set(user)):
        try:
            perform_import(user[key], key)
        except ImportStringError as exc:
            errors.append(Error(str(exc), id="eventsourcing_app.E002"))
    errors.extend(_check_values(user))
    errors.extend(_check_middleware(user.get("COMMAND_MIDDLEWARE", DEFAULTS["COMMAND_MIDDLEWARE"])))
    return errors


# Outbox settings that must be numbers, with the smallest value each accepts.
OUTBOX_NUMBERS = {
    "OUTBOX_BATCH_SIZE": 1,
    "OUTBOX_MAX_ATTEMPTS": 1,
    "OUTBOX_RETRY_BASE_DELAY": 0,
    "OUTBOX_RETRY_MAX_DELAY": 0,
    "OUTBOX_LEASE_SECONDS": 0.001,
    "OUTBOX_TASK_SECONDS": 0,
    "OUTBOX_RETENTION_SECONDS": 0,
    "OUTBOX_CONSUMER_RETENTION_SECONDS": 0,
}


@register()
def outbox_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """OUTBOX_DESTINATIONS and OUTBOX_ROUTES: unknown destinations, bad import strings, bad shapes; and numbers."""
    user = getattr(settings, "EVENTSOURCING", {}) or {}
    if not isinstance(user, dict):
        return []  # reported by eventsourcing_settings_check
    from .outbox.routes import configuration_problems

    errors: list[CheckMessage] = [Error(problem, id="eventsourcing_app.E004") for problem in configuration_problems()]
    numbers = {}
    for key, minimum in OUTBOX_NUMBERS.items():
        value = numbers[key] = user.get(key, DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            errors.append(Error(f"EVENTSOURCING[{key!r}] must be a number >= {minimum}.", id="eventsourcing_app.E003"))
    if not errors:
        errors.extend(_check_consumer_retention(numbers))
    return errors


def _check_consumer_retention(numbers: dict[str, float]) -> list[checks.Warning]:
    """Consumers must remember a message id for longer than the outbox may still redeliver it."""
    base, cap = numbers["OUTBOX_RETRY_BASE_DELAY"], numbers["OUTBOX_RETRY_MAX_DELAY"]
    retries = range(1, int(numbers["OUTBOX_MAX_ATTEMPTS"]))
    span = sum(min(cap, base * 2.0 ** min(attempt - 1, 64)) for attempt in retries)
    if numbers["OUTBOX_CONSUMER_RETENTION_SECONDS"] >= span:
        return []
    return [
        checks.Warning(
            f"EVENTSOURCING['OUTBOX_CONSUMER_RETENTION_SECONDS'] ({numbers['OUTBOX_CONSUMER_RETENTION_SECONDS']} s)"
            f" is shorter than the outbox's retry schedule ({span:.0f} s): a message redelivered after its id"
            " was forgotten is handled again.",
            hint="Keep ids for the whole retry schedule, plus the time a dead letter may wait to be requeued.",
            id="eventsourcing_app.W001",
        )
    ]


def _check_middleware(entries: Any) -> list[Error]:
    """Each COMMAND_MIDDLEWARE entry is an import string or {"class": ..., "commands": [...], "options": {...}}."""
    if not isinstance(entries, list | tuple):
        return [Error("EVENTSOURCING['COMMAND_MIDDLEWARE'] must be a list.", id="eventsourcing_app.E003")]
    errors = []
    for entry in entries:
        path = entry.get("class") if isinstance(entry, dict) else entry
        if not isinstance(path, str):
            errors.append(Error(f"Bad COMMAND_MIDDLEWARE entry {entry!r}.", id="eventsourcing_app.E003"))
            continue
        try:
            import_string(path)
        except ImportError as exc:
            errors.append(Error(f"Could not import COMMAND_MIDDLEWARE {path!r}: {exc}.", id="eventsourcing_app.E002"))
    return errors


def _check_values(user: dict[str, Any]) -> list[Error]:
    errors = []
    batch = user.get("READ_BATCH_SIZE", DEFAULTS["READ_BATCH_SIZE"])
    if not isinstance(batch, int) or batch < 1:
        errors.append(
            Error("EVENTSOURCING['READ_BATCH_SIZE'] must be a positive integer.", id="eventsourcing_app.E003")
        )
    snapshot_every = user.get("SNAPSHOT_EVERY", {})
    if not isinstance(snapshot_every, dict) or not all(isinstance(n, int) and n > 0 for n in snapshot_every.values()):
        errors.append(
            Error(
                "EVENTSOURCING['SNAPSHOT_EVERY'] must map aggregate categories to positive integers.",
                id="eventsourcing_app.E003",
            )
        )
    return errors
