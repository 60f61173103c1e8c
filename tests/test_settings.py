"""The EVENTSOURCING settings object, its system checks, and the store's cipher/upcaster hooks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from eventsourcing_app.checks import eventsourcing_settings_check, outbox_check
from eventsourcing_app.conf import DEFAULTS, ImportStringError, es_settings
from eventsourcing_app.models import Event
from eventsourcing_app.store import DomainEvent, EventStore


@dataclass(frozen=True)
class Secretive(DomainEvent, event_type="tests.settings.Secretive"):
    email: str
    schema_note: str = "v2"


class ReversingCipher:
    """Stands in for field encryption: what is stored is not what the event says."""

    def encrypt(self, event_type: str, data: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        return {**data, "email": data["email"][::-1]}

    def decrypt(self, event_type: str, data: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
        return {**data, "email": data["email"][::-1]}


class V1ToV2Upcaster:
    def upcast(self, event_type: str, schema_version: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if event_type == Secretive.event_type and schema_version == 1:
            return 2, {**data, "schema_note": "upcast from v1"}
        return schema_version, data


def test_defaults_are_used_when_nothing_is_set(settings) -> None:
    settings.EVENTSOURCING = {}
    assert es_settings.READ_BATCH_SIZE == DEFAULTS["READ_BATCH_SIZE"]
    assert [hook.__name__ for hook in es_settings.APPEND_HOOKS] == ["apply_inline_projections", "write_outbox_messages"]


def test_override_settings_reaches_cached_values() -> None:
    assert es_settings.READ_BATCH_SIZE == 500
    with override_settings(EVENTSOURCING={"READ_BATCH_SIZE": 7}):
        assert es_settings.READ_BATCH_SIZE == 7
    assert es_settings.READ_BATCH_SIZE == 500


def test_unknown_attribute_is_an_error() -> None:
    with pytest.raises(AttributeError, match="Invalid EVENTSOURCING setting"):
        _ = es_settings.NO_SUCH_THING


def test_bad_import_string_names_the_setting(settings) -> None:
    settings.EVENTSOURCING = {"FIELD_CIPHER": "no.such.Cipher"}
    with pytest.raises(ImportStringError, match="FIELD_CIPHER"):
        _ = es_settings.FIELD_CIPHER


@pytest.mark.parametrize(
    ("value", "error_id"),
    [
        ({"NOPE": 1}, "eventsourcing_app.E001"),
        ({"APPEND_HOOKS": ["no.such.hook"]}, "eventsourcing_app.E002"),
        ({"READ_BATCH_SIZE": 0}, "eventsourcing_app.E003"),
        ({"SNAPSHOT_EVERY": {"Order": -5}}, "eventsourcing_app.E003"),
        ("not a dict", "eventsourcing_app.E001"),
        ({"COMMAND_MIDDLEWARE": ["no.such.Middleware"]}, "eventsourcing_app.E002"),
        ({"COMMAND_MIDDLEWARE": [{"class": 3}]}, "eventsourcing_app.E003"),
        ({"COMMAND_MIDDLEWARE": "not a list"}, "eventsourcing_app.E003"),
    ],
)
def test_system_checks_report_bad_settings(settings, value: object, error_id: str) -> None:
    settings.EVENTSOURCING = value
    assert error_id in [error.id for error in eventsourcing_settings_check()]


def test_consumers_forgetting_ids_before_the_last_retry_get_a_warning(settings) -> None:
    settings.EVENTSOURCING = {"OUTBOX_RETRY_BASE_DELAY": 1, "OUTBOX_RETRY_MAX_DELAY": 300, "OUTBOX_MAX_ATTEMPTS": 10}
    assert [message.id for message in outbox_check()] == []  # retries span 511 s; ids are kept 30 days

    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "OUTBOX_CONSUMER_RETENTION_SECONDS": 500}
    [warning] = outbox_check()

    assert (warning.id, warning.level) == ("eventsourcing_app.W001", checks.WARNING)
    assert "shorter than the outbox's retry schedule (511 s)" in warning.msg


def test_valid_settings_pass_the_checks(settings) -> None:
    settings.EVENTSOURCING = {"APPEND_HOOKS": ["tests.test_store.recording_hook"], "SNAPSHOT_EVERY": {"Order": 10}}
    assert eventsourcing_settings_check() == []


def test_manage_check_fails_on_bad_settings(settings) -> None:
    settings.EVENTSOURCING = {"TYPO": True}
    with pytest.raises(SystemCheckError, match="E001"):
        call_command("check")


@pytest.mark.django_db
def test_field_cipher_sees_data_on_write_and_read(settings) -> None:
    settings.EVENTSOURCING = {"FIELD_CIPHER": "tests.test_settings.ReversingCipher"}
    store, sid = EventStore(), f"Person-{uuid.uuid4()}"
    store.append(sid, [Secretive(email="ada@example.com")])
    assert Event.objects.get(stream_id=sid).data["email"] == "moc.elpmaxe@ada"
    assert store.read_stream(sid)[0].data.email == "ada@example.com"


@pytest.mark.django_db
def test_upcaster_reads_old_events_as_the_latest_schema(settings) -> None:
    settings.EVENTSOURCING = {"UPCASTER": "tests.test_settings.V1ToV2Upcaster"}
    store, sid = EventStore(), f"Person-{uuid.uuid4()}"
    store.append(sid, [Secretive(email="ada@example.com")])
    (event,) = store.read_stream(sid)
    assert (event.schema_version, event.data.schema_note) == (2, "upcast from v1")
