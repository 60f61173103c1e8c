"""The SQL of an append, shared by PostgreSQL and SQLite where the dialects agree.

Every statement that moves a stream's version on is guarded by "none of these
event ids is stored yet": an append that repeats stored events changes nothing,
and the store can then tell an idempotent retry from a conflict without paying
for a savepoint on the hot path.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .records import ANY, NO_STREAM, STREAM_EXISTS, ExpectedVersion

STREAM_TABLE = "eventsourcing_stream"
EVENT_TABLE = "eventsourcing_event"
# recorded_at is read as text: Python's fromisoformat parses it in a fraction of the time of the
# per-row timestamp loader Django installs on PostgreSQL connections (a quarter of an aggregate load).
EVENT_COLUMNS = (
    "position, event_id, stream_id, version, event_type, schema_version, data, metadata,"
    " CAST(recorded_at AS text) AS recorded_at"
)
INSERTED_COLUMNS = (
    "event_id, stream_id, category, version, event_type, schema_version, data, metadata, tenant_id, recorded_at"
)
# Events per INSERT: 10,000 parameters, under SQLite's 32,766 and PostgreSQL's 65,535.
INSERT_CHUNK = 1000

_json_encode = msgspec.json.encode


def advance_stream(
    stream_id: str,
    *,
    category: str,
    tenant_id: str | None,
    count: int,
    expected: ExpectedVersion,
    stamp: Any,
    event_ids: list[Any],
    ids_as_array: bool = False,
) -> tuple[str, list[Any]]:
    """SQL that moves the stream's version on by `count` and returns the new version.

    It returns no row when the stream is not at `expected` or one of `event_ids`
    is already stored. Its row lock makes concurrent writers to one stream queue,
    and the losers then see the version the winner wrote.

    `event_ids` are the ids the caller chose; ids the store made up itself cannot
    be stored yet, and with none to check the statement reads no event row at all
    (so no plan of it depends on how big the events table is thought to be).
    `ids_as_array` (PostgreSQL) passes them as one array, so the text is the same for any number of them.
    """
    not_stored = ""
    if event_ids:
        listed = "= ANY(%s::uuid[])" if ids_as_array else f"IN ({', '.join(['%s'] * len(event_ids))})"
        not_stored = f" AND NOT EXISTS (SELECT 1 FROM {EVENT_TABLE} WHERE event_id {listed})"
        if ids_as_array:
            event_ids = [event_ids]
    insert = (
        f"INSERT INTO {STREAM_TABLE} (stream_id, category, tenant_id, version, created_at, updated_at)"
        f" SELECT %s, %s, %s, %s, %s, %s WHERE TRUE{not_stored} ON CONFLICT (stream_id)"
    )
    update = f"UPDATE {STREAM_TABLE} SET version = version + %s, updated_at = %s WHERE stream_id = %s"
    if expected is ANY:
        sql = f"{insert} DO UPDATE SET version = {STREAM_TABLE}.version + %s, updated_at = %s RETURNING version"
        return sql, [stream_id, category, tenant_id, count, stamp, stamp, *event_ids, count, stamp]
    if expected is NO_STREAM or (_is_version(expected) and expected == 0):
        params = [stream_id, category, tenant_id, count, stamp, stamp, *event_ids]
        return f"{insert} DO NOTHING RETURNING version", params
    if expected is STREAM_EXISTS:
        return f"{update}{not_stored} RETURNING version", [count, stamp, stream_id, *event_ids]
    if _is_version(expected) and expected > 0:
        sql = f"{update} AND version = %s{not_stored} RETURNING version"
        return sql, [count, stamp, stream_id, expected, *event_ids]
    raise ValueError(f"expected_version must be ANY, NO_STREAM, STREAM_EXISTS or an int >= 0, not {expected!r}.")


def insert_events(rows: list[tuple]) -> tuple[str, list[Any]]:
    """A multi-row INSERT of event rows (in INSERTED_COLUMNS order) returning (version, position)."""
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"] * len(rows))
    sql = f"INSERT INTO {EVENT_TABLE} ({INSERTED_COLUMNS}) VALUES {values} RETURNING version, position"
    return sql, [value for row in rows for value in row]


def append_in_one_statement(
    stream_sql: str, stream_params: list[Any], head: tuple, rows: list[tuple]
) -> tuple[str, list[Any]]:
    """PostgreSQL: the stream update and the event inserts as one statement (one round trip).

    `head` is (stream_id, category, count, stamp), shared by every row; `rows` are
    (event_id, event_type, schema_version, data JSON, metadata JSON, tenant_id). Versions
    come from the stream's new version; ORDER BY makes positions follow versions.

    One event goes as plain parameters. Several travel as one JSON array parameter, so
    the statement's text is the same for any number of them: psycopg converts it once and
    the server prepares it once (a VALUES list would be a new statement for each count,
    which psycopg re-parses on every call past 50 parameters; array parameters cost psycopg
    a regex escape per JSON text). The one-event form is kept because, measured with eight
    writers on the gap-free lock of the time, it let about a third more appends through than the JSON
    form (docs/benchmarks.md).
    """
    insert = f"WITH s AS ({stream_sql}) INSERT INTO {EVENT_TABLE} ({INSERTED_COLUMNS})"
    if len(rows) == 1:
        sql = (
            f"{insert} SELECT %s::uuid, %s, %s, s.version, %s, %s, %s::jsonb, %s::jsonb, %s, %s FROM s"
            " RETURNING version, position"
        )
        event_id, event_type, schema_version, data, metadata, tenant_id = rows[0]
        stream_id, category, _, stamp = head
        params = [event_id, stream_id, category, event_type, schema_version, data, metadata, tenant_id, stamp]
        return sql, [*stream_params, *params]
    sql = (
        f"{insert} SELECT (v.row->>0)::uuid, %s, %s, s.version - %s + v.i, v.row->>1, (v.row->>2)::int, v.row->3,"
        " v.row->4, v.row->>5, %s FROM s CROSS JOIN jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS v(row, i)"
        " ORDER BY v.i RETURNING version, position"
    )
    encoded = ",".join(
        f'["{event_id}",{_text(event_type)},{schema_version},{data},{metadata},{_text(tenant_id)}]'
        for event_id, event_type, schema_version, data, metadata, tenant_id in rows
    )
    return sql, [*stream_params, *head, f"[{encoded}]"]


def _text(value: str) -> str:
    return _json_encode(value).decode()


def _is_version(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
