"""Every error the app raises. Each carries a stable `code` and a `default_detail`.

Only the HTTP layer maps codes to statuses and only management commands map
errors to `CommandError`, so the core never mentions either.
"""

from __future__ import annotations

from typing import Any


class EventSourcingError(Exception):
    """Root of the app's errors."""

    code = "error"
    default_detail = "An event sourcing error occurred."

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        super().__init__(self.detail)


class ConcurrencyError(EventSourcingError):
    """The stream is not at the version the writer expected."""

    code = "concurrency_conflict"
    default_detail = "The stream has moved on since it was read."

    def __init__(self, stream_id: str, expected: Any, actual: int | None) -> None:
        self.stream_id = stream_id
        self.expected = expected
        # None only when a concurrent writer was detected inside an already failed transaction.
        self.actual = actual
        actual_text = "unknown (another writer committed first)" if actual is None else actual
        super().__init__(f"Stream {stream_id!r}: expected version {expected}, actual version {actual_text}.")


class StreamNotFoundError(EventSourcingError):
    """A stream (or the aggregate stored in it) has no events."""

    code = "stream_not_found"
    default_detail = "No such stream."

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"Stream {stream_id!r} does not exist.")


class ImmutableEventError(EventSourcingError):
    """Events are append-only: they are written by the event store and never changed."""

    code = "immutable_event"
    default_detail = "Events are immutable: append new events through EventStore.append()."


class DuplicateEventIdError(EventSourcingError):
    """Some of the events of an append were already stored, but not as that same append."""

    code = "duplicate_event_id"
    default_detail = "An event with this event_id is already stored elsewhere."


class InvalidStreamIdError(EventSourcingError):
    """A stream id must be "Category-id" with a non-empty category and id."""

    code = "invalid_stream_id"
    default_detail = 'A stream id has the form "Category-id".'


class UnknownEventTypeError(EventSourcingError):
    """An event class was asked for by a name no class registered."""

    code = "unknown_event_type"
    default_detail = "No event class is registered under this name."


class AlreadyRegisteredError(EventSourcingError):
    """A name was registered twice in one registry."""

    code = "already_registered"
    default_detail = "This name is already registered."


class AggregateError(EventSourcingError):
    """An aggregate was given an event it has no handler for, or was used wrongly."""

    code = "aggregate_error"
    default_detail = "The aggregate cannot apply this event."


class CommandRejectedError(EventSourcingError):
    """A domain rule refused the operation (shipping a cancelled order, reserving too much stock)."""

    code = "command_rejected"
    default_detail = "A domain rule refused the command."


class CommandValidationError(EventSourcingError):
    """A command's data failed validation. `errors` maps each field to its messages."""

    code = "invalid"
    default_detail = "The command is not valid."

    def __init__(self, errors: dict[str, Any], detail: str | None = None) -> None:
        self.errors = errors
        super().__init__(detail)


class UnknownCommandError(EventSourcingError):
    """No command type is registered under this name."""

    code = "unknown_command"
    default_detail = "No such command type."


class CommandPermissionError(EventSourcingError):
    """The user may not dispatch this command type (or act for this tenant)."""

    code = "permission_denied"
    default_detail = "You do not have permission to dispatch this command."


class TenantRequiredError(EventSourcingError):
    """Tenants are required, and none could be resolved for the command."""

    code = "tenant_required"
    default_detail = "This command needs a tenant."


class IdempotencyConflictError(EventSourcingError):
    """An idempotency key was reused with a different command or body."""

    code = "idempotency_key_reused"
    default_detail = "This Idempotency-Key was already used with a different request."


class IdempotencyInProgressError(EventSourcingError):
    """A request with the same idempotency key is still being handled."""

    code = "idempotency_in_progress"
    default_detail = "A request with this Idempotency-Key is still in progress; retry later."


class CommandTimeoutError(EventSourcingError):
    """The command ran past its time limit and was rolled back."""

    code = "command_timeout"
    default_detail = "The command took too long and was rolled back."


class CommandFailedError(EventSourcingError):
    """An unexpected error in a handler: logged with its traceback, reported without details."""

    code = "command_failed"
    default_detail = "The command failed because of an internal error."


class ProjectionNotFoundError(EventSourcingError):
    """No projection is registered under this name."""

    code = "projection_not_found"
    default_detail = "No such projection."


class LeaseLostError(EventSourcingError):
    """Another worker holds (or took over) the lease on a projection: this batch is not applied."""

    code = "lease_lost"
    default_detail = "The lease on this projection is held by another worker."


class PublishError(EventSourcingError):
    """An outbox publisher could not deliver a message: it is retried with backoff, then dead-lettered."""

    code = "publish_failed"
    default_detail = "The message could not be published."


class OutboxConfigurationError(EventSourcingError):
    """OUTBOX_ROUTES or OUTBOX_DESTINATIONS is wrong: an unknown destination, a bad import string or value."""

    code = "outbox_misconfigured"
    default_detail = "The outbox is misconfigured."


class OutboxWriteError(EventSourcingError):
    """The outbox rows of an append could not be written: the append is rolled back with them."""

    code = "outbox_write_failed"
    default_detail = "The outbox messages of these events could not be written."
