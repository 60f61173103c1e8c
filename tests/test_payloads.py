"""Event payloads round-trip exactly through the store (Decimal, datetimes, dates, UUIDs, nesting)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventsourcing_app.store import DomainEvent, EventStore

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Line:
    sku: str
    price: Decimal
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Everything(DomainEvent, event_type="tests.payloads.Everything"):
    amount: Decimal
    at: datetime
    on: date
    ref: uuid.UUID
    lines: list[Line]
    totals: dict[str, Decimal]
    nested: dict[str, list[dict[str, int]]]
    note: str | None = None


decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(lambda d: d.is_finite())
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
aware_datetimes = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.one_of(st.just(UTC), offsets)
)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
lines = st.builds(Line, sku=text, price=decimals, tags=st.lists(text, max_size=3))
everything = st.builds(
    Everything,
    amount=decimals,
    at=aware_datetimes,
    on=st.dates(),
    ref=st.uuids(),
    lines=st.lists(lines, max_size=4),
    totals=st.dictionaries(text, decimals, max_size=4),
    nested=st.dictionaries(text, st.lists(st.dictionaries(text, st.integers(-(2**53), 2**53)), max_size=3)),
    note=st.none() | text,
)


@given(event=everything)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_payload_round_trips_exactly(event: Everything, event_store: EventStore) -> None:
    sid = f"Payload-{uuid.uuid4()}"
    event_store.append(sid, [event])
    (stored,) = event_store.read_stream(sid)
    assert stored.data == event
    # Equal is not enough for Decimal (1.0 == 1.00) or datetimes (same instant, other offset).
    assert str(stored.data.amount) == str(event.amount)
    assert stored.data.at.utcoffset() == event.at.utcoffset()
    assert [str(line.price) for line in stored.data.lines] == [str(line.price) for line in event.lines]


def test_decimal_precision_and_exponent_survive(event_store: EventStore) -> None:
    amounts = [Decimal("0.10"), Decimal("1E+3"), Decimal("-0.000001"), Decimal("123456789012345678901234567890.5")]
    for amount in amounts:
        sid = f"Payload-{uuid.uuid4()}"
        event = Everything(
            amount=amount,
            at=datetime(2026, 1, 1, 12, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            on=date(2026, 2, 28),
            ref=uuid.uuid4(),
            lines=[],
            totals={"eur": amount},
            nested={},
        )
        event_store.append(sid, [event])
        stored = event_store.read_stream(sid)[0].data
        assert str(stored.amount) == str(amount)
        assert str(stored.totals["eur"]) == str(amount)
