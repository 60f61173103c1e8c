"""The cursor the store's hot statements run on.

Django's PostgreSQL cursors bind parameters on the client by default: the values
are spliced into the SQL text, so no two appends send the same statement and the
server parses and plans every one of them (for a one-event append that is most
of its time on the server). The store runs its few hot statements (append, the
event inserts, reading a stream, a snapshot and its tail, the idempotency claim)
with server-side binding instead: their text never changes, so psycopg can keep
them prepared on the connection.

Preparing stays as Django leaves it, off, unless the DATABASES entry asks for it
with OPTIONS["prepare_threshold"] (psycopg prepares a statement once it has run
that many times on a connection). Django keeps it off because a pooler in
transaction mode can hand the next transaction another server connection, where
the statement is not prepared: PgBouncer handles that from 1.21 on
(max_prepared_statements); with an older one, leave prepare_threshold unset.
See docs/event-store.md.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper


def statement_cursor(connection: BaseDatabaseWrapper) -> CursorWrapper:
    """A Django cursor (errors translated, execute_wrappers applied) binding on the server where it can.

    While queries are logged (DEBUG, or a test counting them) it is Django's own cursor:
    Django cannot show the SQL of a statement psycopg ran prepared, and logging is not fast anyway.
    """
    cursor_class = _server_binding_cursor() if connection.vendor == "postgresql" else None
    if cursor_class is None or connection.queries_logged:
        return connection.cursor()
    # What connection.cursor() does, with another cursor class.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        cursor = cursor_class(connection.connection)
    return connection.make_cursor(cursor)


@cache
def _server_binding_cursor() -> Any:
    """Django's server-binding cursor class with psycopg 3 (None with psycopg2, which only binds on the client)."""
    from django.db.backends.postgresql import base  # needs a PostgreSQL driver: only asked for on PostgreSQL

    return getattr(base, "ServerBindingCursor", None)
