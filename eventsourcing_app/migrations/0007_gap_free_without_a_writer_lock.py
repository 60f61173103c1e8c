"""PostgreSQL: the global log stays gap-free for readers without serialising the writers.

Until now every INSERT into the events table took one exclusive advisory lock held
until COMMIT: writers queued for it, each through its commit's WAL flush, so eight
writers got little more than one, and a long transaction that had appended (a saga
batch) held up every other writer.

Now a writer only *marks itself in flight* before its INSERT takes positions: a
shared transaction-scoped advisory lock whose key carries the highest position
the sequence has handed out so far; every position the INSERT takes is above it.
Shared locks never wait for each other. Readers ask
`eventsourcing_event_safe_head()` how far they may read: no further than what the
sequence had handed out, and no further than the mark of any other transaction
still in flight (prepared ones included). See docs/event-store.md.
"""

from django.db import migrations

# Keys of the in-flight marks: IN_FLIGHT_SPACE in the top 24 bits, a position (< 2**40) below.
IN_FLIGHT_SPACE = 0x4C4F47  # "LOG"
POSITION_BITS = 40
# The key of the exclusive lock this migration retires (0002_postgresql_triggers).
GAP_FREE_LOCK_KEY = 0x65735F676170


def _sql(sequence: str) -> tuple[str, str]:
    mask = (1 << POSITION_BITS) - 1
    # The highest position handed out so far: what a writer marks, and the first bound of the head.
    read_handed_out = f"SELECT last_value - (NOT is_called)::int INTO handed_out FROM {sequence};"
    forward = f"""
ALTER SEQUENCE {sequence} CACHE 1;

CREATE OR REPLACE FUNCTION eventsourcing_event_mark_in_flight() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    handed_out bigint;
BEGIN
    -- Every position this INSERT takes comes after what the sequence has handed out now.
    {read_handed_out}
    IF handed_out > {mask} THEN
        RAISE EXCEPTION 'eventsourcing_event positions past 2^{POSITION_BITS} cannot be marked in flight';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(({IN_FLIGHT_SPACE}::bigint << {POSITION_BITS}) | handed_out);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS eventsourcing_event_gap_free ON eventsourcing_event;
CREATE TRIGGER eventsourcing_event_gap_free
    BEFORE INSERT ON eventsourcing_event
    FOR EACH STATEMENT EXECUTE FUNCTION eventsourcing_event_mark_in_flight();
DROP FUNCTION IF EXISTS eventsourcing_event_serialise_positions();

CREATE OR REPLACE FUNCTION eventsourcing_event_safe_head() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    handed_out bigint;
    lowest_in_flight bigint;
BEGIN
    -- In this order: first what the sequence has handed out, then who is still writing.
    {read_handed_out}
    SELECT min(((classid::bigint << 32) | objid::bigint) & {mask}) INTO lowest_in_flight
      FROM pg_locks
     WHERE locktype = 'advisory' AND objsubid = 1 AND granted
       AND classid::bigint >> {POSITION_BITS - 32} = {IN_FLIGHT_SPACE}
       AND pid IS DISTINCT FROM pg_backend_pid()  -- a prepared transaction's locks have no pid
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database());
    RETURN LEAST(handed_out, lowest_in_flight);
END
$$;
"""
    backward = f"""
DROP FUNCTION IF EXISTS eventsourcing_event_safe_head();
CREATE OR REPLACE FUNCTION eventsourcing_event_serialise_positions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({GAP_FREE_LOCK_KEY});
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS eventsourcing_event_gap_free ON eventsourcing_event;
CREATE TRIGGER eventsourcing_event_gap_free
    BEFORE INSERT ON eventsourcing_event
    FOR EACH STATEMENT EXECUTE FUNCTION eventsourcing_event_serialise_positions();
DROP FUNCTION IF EXISTS eventsourcing_event_mark_in_flight();
"""
    return forward, backward


def _sequence(schema_editor) -> str:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_serial_sequence('eventsourcing_event', 'position')")
        return cursor.fetchone()[0]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_sql(_sequence(schema_editor))[0])


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(_sql(_sequence(schema_editor))[1])


class Migration(migrations.Migration):
    dependencies = [("eventsourcing_app", "0006_event_stream_without_constraint")]

    operations = [migrations.RunPython(forward, backward)]
