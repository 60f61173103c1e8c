"""The outbox's SQL: the insert of an append's messages, the claim of a batch, and the bulk outcome updates.

Raw SQL on Django's connection, as the event store does: every statement
handles a whole batch, so a batch costs a few queries however many messages it
holds. Status literals are written into the SQL (they are constants of ours,
not input) so that both databases can use the partial index on pending
messages.

Ordering. A message is claimable when it is pending, due, not under a live
lease, and every earlier message (lower id) of the same stream and destination
that is still pending is claimed with it: a claim takes, per stream, an
unbroken run from the stream's first pending message (its head). A stream whose
head is in backoff or leased gives nothing. The cost: a claim scans due
messages in id order and so walks past the pending backlog of streams held
back that way (one index probe each, ~5 µs) before it reaches free streams.
"""

from __future__ import annotations

from typing import Any

from ..models import OutboxMessage, OutboxStatus

TABLE = OutboxMessage._meta.db_table
PENDING = OutboxStatus.PENDING.value
DELIVERED = OutboxStatus.DELIVERED.value
DEAD = OutboxStatus.DEAD.value
# Rows per INSERT of an append's messages: 10 parameters each, far under both databases' limits.
INSERT_CHUNK = 1000
CLAIMED_COLUMNS = (
    "id, message_id, destination, event_type, stream_id, position, event_id, payload, attempts, created_at"
)
INSERTED_COLUMNS = (
    "message_id, destination, event_id, position, stream_id, event_type, tenant_id, payload, status, attempts,"
    " available_at, lease_owner, lease_expires_at, last_error, created_at, delivered_at"
)
ROW_VALUES = f"(%s, %s, %s, %s, %s, %s, %s, %s, '{PENDING}', 0, %s, '', NULL, '', %s, NULL)"

# m waits while the first pending message of its stream and destination (its "head", when that is not m
# itself) is in backoff or leased: one short index probe per row. OFFSET 0 keeps the EXISTS a per-row
# subplan that PostgreSQL rates as passing half the rows, so it scans due messages in id order and stops
# at the batch size; as an anti-join, its plan turns quadratic when the table's statistics are stale.
_HEAD_IS_FREE = f"""NOT EXISTS (
    SELECT 1 FROM (
        SELECT e.available_at, e.lease_expires_at FROM {TABLE} e
        WHERE e.stream_id = m.stream_id AND e.destination = m.destination AND e.id < m.id
          AND e.status = '{PENDING}'
        ORDER BY e.id LIMIT 1
    ) head
    WHERE head.available_at > %s OR head.lease_expires_at >= %s
    {{fence}}
)"""
_CLAIMABLE = f"""m.status = '{PENDING}' AND m.available_at <= %s
      AND (m.lease_expires_at IS NULL OR m.lease_expires_at < %s)
      AND m.destination IN ({{destinations}})
      AND {_HEAD_IS_FREE}"""
# A candidate is kept only if its stream's candidates are an unbroken run from the stream's head: the
# pending message just before it (one probe) is the candidate just before it, for it and every earlier
# candidate of its stream. Candidates past a gap are dropped: the gap is a message another processor is
# claiming right now (skipped as locked) or one held back (a requeued dead letter ahead of a leased run).
_UNBROKEN_RUNS = f"""linked AS (
    SELECT c.id, c.stream_id, c.destination,
        CASE WHEN COALESCE((
            SELECT MAX(e.id) FROM {TABLE} e
            WHERE e.stream_id = c.stream_id AND e.destination = c.destination AND e.id < c.id
              AND e.status = '{PENDING}'
        ), 0) = COALESCE(LAG(c.id) OVER (PARTITION BY c.stream_id, c.destination ORDER BY c.id), 0)
        THEN 1 ELSE 0 END AS linked
    FROM candidates c
), claimable AS (
    SELECT id FROM (
        SELECT id, MIN(linked) OVER (PARTITION BY stream_id, destination ORDER BY id) AS unbroken FROM linked
    ) runs
    WHERE unbroken = 1
)"""


def insert_messages(rows: list[tuple]) -> tuple[str, list[Any]]:
    """One INSERT of many messages; each row is (message_id, destination, event_id, position,
    stream_id, event_type, tenant_id, payload JSON, available_at, created_at)."""
    return (
        f"INSERT INTO {TABLE} ({INSERTED_COLUMNS}) VALUES {', '.join([ROW_VALUES] * len(rows))}",
        [value for row in rows for value in row],
    )


def claim(vendor: str, *, owner: str, now: Any, expires: Any, limit: int, destinations: list[str]) -> tuple[str, list]:
    """Lease up to `limit` claimable messages to `owner` in one statement; returns their CLAIMED_COLUMNS.

    Candidates are due, unleased messages whose stream head is neither in backoff nor
    leased, in id order; of those, each stream keeps its unbroken run from the head.

    PostgreSQL: candidates are locked with FOR UPDATE SKIP LOCKED, so processors claiming
    at the same time never wait for each other nor take the same row, and the run check
    drops a stream's candidates behind a message another processor is claiming at this
    very moment (locked, and still unleased in our snapshot). So two processors never hold
    messages of one stream and destination at once, except a requeued dead letter, which
    is the stream's head again while later messages may be out with another processor.

    SQLite: the statement holds the database's write lock from its start (its transaction
    begins as a write) and sees no other writer, so the same rules need no row locks.
    """
    marks = ", ".join(["%s"] * len(destinations))
    postgresql = vendor == "postgresql"
    claimable = _CLAIMABLE.format(destinations=marks, fence="OFFSET 0" if postgresql else "")
    lock = "FOR UPDATE OF m SKIP LOCKED" if postgresql else ""
    sql = f"""
WITH candidates AS (
    SELECT m.id, m.stream_id, m.destination FROM {TABLE} m
    WHERE {claimable}
    ORDER BY m.id LIMIT %s
    {lock}
), {_UNBROKEN_RUNS}
UPDATE {TABLE} SET lease_owner = %s, lease_expires_at = %s
WHERE id IN (SELECT id FROM claimable)
RETURNING {CLAIMED_COLUMNS}"""
    return sql, [now, now, *destinations, now, now, limit, owner, expires]


def _ids(ids: list[int]) -> str:
    """An IN list of row ids (integers we read from the database, so inlined safely)."""
    return ", ".join(str(int(row_id)) for row_id in ids)


def mark_delivered(ids: list[int], *, owner: str, now: Any) -> tuple[str, list]:
    """Delivered: only rows still leased to `owner` (one that lost its lease changes nothing)."""
    sql = f"""
UPDATE {TABLE} SET status = '{DELIVERED}', delivered_at = %s, attempts = attempts + 1,
    lease_owner = '', lease_expires_at = NULL, last_error = ''
WHERE id IN ({_ids(ids)}) AND lease_owner = %s AND status = '{PENDING}'
RETURNING id"""
    return sql, [now, owner]


def mark_failed(failures: list[tuple[int, Any, str]], *, owner: str, max_attempts: int) -> tuple[str, list]:
    """Failed attempts, (id, next available_at, error) each: retry later, or dead letter at max_attempts."""
    available = " ".join("WHEN %s THEN %s" for _ in failures)
    errors = " ".join("WHEN %s THEN %s" for _ in failures)
    sql = f"""
UPDATE {TABLE} SET attempts = attempts + 1,
    status = CASE WHEN attempts + 1 >= %s THEN '{DEAD}' ELSE '{PENDING}' END,
    available_at = CASE id {available} ELSE available_at END,
    last_error = CASE id {errors} ELSE last_error END,
    lease_owner = '', lease_expires_at = NULL
WHERE id IN ({_ids([row_id for row_id, _, _ in failures])}) AND lease_owner = %s AND status = '{PENDING}'
RETURNING id, status"""
    params: list[Any] = [max_attempts]
    params.extend(value for row_id, at, _ in failures for value in (row_id, at))
    params.extend(value for row_id, _, error in failures for value in (row_id, error))
    params.append(owner)
    return sql, params


def release(ids: list[int], *, owner: str) -> tuple[str, list]:
    """Give messages back untried (their stream's earlier message failed in this batch)."""
    sql = f"""
UPDATE {TABLE} SET lease_owner = '', lease_expires_at = NULL
WHERE id IN ({_ids(ids)}) AND lease_owner = %s"""
    return sql, [owner]


def renew(ids: list[int], *, owner: str, expires: Any) -> tuple[str, list]:
    """Extend the lease of messages still being published; returns the ids still ours."""
    sql = f"""
UPDATE {TABLE} SET lease_expires_at = %s
WHERE id IN ({_ids(ids)}) AND lease_owner = %s AND status = '{PENDING}'
RETURNING id"""
    return sql, [expires, owner]
