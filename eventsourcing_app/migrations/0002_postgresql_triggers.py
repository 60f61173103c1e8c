"""PostgreSQL triggers: events are append-only, and the global log is gap-free.

* `eventsourcing_event_append_only` refuses UPDATE and DELETE on the events
  table, whatever the client (ORM, raw SQL, psql).
* `eventsourcing_event_gap_free` takes one transaction-scoped advisory lock
  before any INSERT into the events table assigns positions. The lock is held
  until COMMIT, so positions become visible in the order they were assigned: a
  reader following the log by position never sees a higher position before a
  lower one has committed (or rolled back). See docs/event-store.md.
"""

from django.db import migrations

# Key of the advisory lock that serialises position assignment ("es" + "gapfree" in hex-ish).
GAP_FREE_LOCK_KEY = 0x65735F676170

FORWARD = f"""
CREATE OR REPLACE FUNCTION eventsourcing_event_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'eventsourcing_event is append-only: ' || TG_OP || ' refused',
        ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER eventsourcing_event_append_only
    BEFORE UPDATE OR DELETE ON eventsourcing_event
    FOR EACH STATEMENT EXECUTE FUNCTION eventsourcing_event_refuse_change();

CREATE OR REPLACE FUNCTION eventsourcing_event_serialise_positions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({GAP_FREE_LOCK_KEY});
    RETURN NULL;
END
$$;
CREATE TRIGGER eventsourcing_event_gap_free
    BEFORE INSERT ON eventsourcing_event
    FOR EACH STATEMENT EXECUTE FUNCTION eventsourcing_event_serialise_positions();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS eventsourcing_event_gap_free ON eventsourcing_event;
DROP FUNCTION IF EXISTS eventsourcing_event_serialise_positions();
DROP TRIGGER IF EXISTS eventsourcing_event_append_only ON eventsourcing_event;
DROP FUNCTION IF EXISTS eventsourcing_event_refuse_change();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("eventsourcing_app", "0001_initial")]

    operations = [migrations.RunPython(forward, backward)]
