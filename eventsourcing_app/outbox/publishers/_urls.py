"""URLs as publishers show them in errors and logs: never with a password or a query string."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact(url: str) -> str:
    """`url` without its password and query (where tokens live); the rest identifies the destination.

    Broker URLs carry passwords (`amqp://user:pass@host/`) and webhook URLs often a token in
    the query: an error message ends up in `OutboxMessage.last_error`, the admin and logs.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    if parts.username or parts.password is not None:
        netloc = f"{parts.username or ''}{':***' if parts.password is not None else ''}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))
