"""LogPublisher: a destination that only writes a log line per message.

Useful in development, in the embedded default, and as a dry run of a route before a real
destination exists. It never logs the payload: event data may hold personal data.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ImproperlyConfigured

from .base import OutgoingMessage, Publisher


class LogPublisher(Publisher):
    """Logs one line per message (ids, type, stream, position, attempt) and always succeeds.

    Args:
        logger: the logger's name.
        level: a level name ("INFO") or number.
    """

    def __init__(self, *, logger: str = "eventsourcing_app.outbox", level: str | int = "INFO") -> None:
        self.logger = logging.getLogger(logger)
        self.level = _level(level)

    def publish(self, message: OutgoingMessage) -> None:
        self.logger.log(
            self.level,
            "outbox %s → %s: %s of %s (position %d, event %s, attempt %d)",
            message.message_id,
            message.destination,
            message.event_type,
            message.stream_id,
            message.position,
            message.event_id,
            message.attempt,
            extra={
                "message_id": message.message_id,
                "destination": message.destination,
                "event_type": message.event_type,
            },
        )


def _level(level: str | int) -> int:
    if isinstance(level, bool) or not isinstance(level, str | int):
        raise ImproperlyConfigured(f"LogPublisher: level must be a level name or number, not {level!r}.")
    if isinstance(level, int):
        return level
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ImproperlyConfigured(f"LogPublisher: unknown log level {level!r}; use one of {', '.join(levels)}.")
    return levels[level.upper()]
